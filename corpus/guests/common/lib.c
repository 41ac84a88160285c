/* User-mode helpers shared by the corpus guests: clock, entropy, console formatting, mem* for the compiler. */
#include "ftvm.h"

static struct {
    uint32_t length;
    char data[256];
} console_line __attribute__((aligned(8)));

uint64_t clock_ns(void)
{
    uint64_t low = inl(CLOCK_LO);
    uint64_t high = inl(CLOCK_HI);
    return (high << 32) | low;
}

uint32_t entropy(void) { return inl(ENTROPY); }

void print_flush(void)
{
    if (console_line.length == 0) {
        return;
    }
    outl(CONSOLE_WRITE, gpa_of(&console_line));
    console_line.length = 0;
}

static void print_char(char c)
{
    if (console_line.length == sizeof(console_line.data)) {
        print_flush();
    }
    console_line.data[console_line.length++] = c;
    if (c == '\n') {
        print_flush();
    }
}

void print_str(const char *text)
{
    while (*text) {
        print_char(*text++);
    }
}

void print_u64(uint64_t value)
{
    char digits[20];
    int count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (count > 0) {
        print_char(digits[--count]);
    }
}

void print_hex(uint64_t value)
{
    print_str("0x");
    for (int shift = 60; shift >= 0; shift -= 4) {
        print_char("0123456789abcdef"[(value >> shift) & 0xf]);
    }
}

void *memset(void *destination, int value, size_t bytes)
{
    uint8_t *out = destination;
    for (size_t i = 0; i < bytes; i++) {
        out[i] = (uint8_t)value;
    }
    return destination;
}

void *memcpy(void *destination, const void *source, size_t bytes)
{
    uint8_t *out = destination;
    const uint8_t *in = source;
    for (size_t i = 0; i < bytes; i++) {
        out[i] = in[i];
    }
    return destination;
}

int memcmp(const void *left, const void *right, size_t bytes)
{
    const uint8_t *a = left;
    const uint8_t *b = right;
    for (size_t i = 0; i < bytes; i++) {
        if (a[i] != b[i]) {
            return a[i] < b[i] ? -1 : 1;
        }
    }
    return 0;
}

/* Posts `buffer` for the next frame and waits until the device has filled it (its length is no longer the
 * marker the guest wrote), halting while no network interrupt is pending. */
void net_receive(struct net_buffer *buffer)
{
    buffer->length = 0xffffffffu;
    outl(NET_RX_POST, gpa_of(buffer));
    while (*(volatile uint32_t *)&buffer->length == 0xffffffffu) {
        if ((take_pending() & IRQ_NET) == 0) {
            wait_for_interrupt();
        }
    }
}

/* Rust's `core` calls these two (the C guests do not). */
void *memmove(void *destination, const void *source, size_t bytes)
{
    uint8_t *out = destination;
    const uint8_t *in = source;
    if (out < in) {
        for (size_t i = 0; i < bytes; i++) {
            out[i] = in[i];
        }
    } else {
        for (size_t i = bytes; i > 0; i--) {
            out[i - 1] = in[i - 1];
        }
    }
    return destination;
}

int bcmp(const void *left, const void *right, size_t bytes)
{
    return memcmp(left, right, bytes);
}
