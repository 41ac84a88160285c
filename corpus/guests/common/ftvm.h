/* The guest side of the ftvm guest ABI (ft/src/abi.rs, docs/guest-abi.md) for the C corpus guests.
 * Everything here runs at CPL3; port I/O is a plain in/out instruction (allowed by the TSS I/O bitmap). */
#ifndef FTVM_H
#define FTVM_H

#include <stdint.h>
#include <stddef.h>

/* Ports (ft/src/abi.rs). */
#define SERIAL_BASE 0x3f8
#define CONSOLE_WRITE 0x500
#define POWER_OFF 0x504
#define YIELD 0x508
#define CLOCK_LO 0x510
#define CLOCK_HI 0x514
#define ENTROPY 0x518
#define TIMER_PERIOD_US 0x520
#define DISK_SUBMIT 0x530
#define DISK_COMPLETION 0x534
#define DISK_STATUS 0x538
#define DISK_SECTORS 0x53c
#define DISK_NONE 0xffffffffu
#define NET_TX 0x540
#define NET_RX_POST 0x544

#define SECTOR_BYTES 512
#define NET_FRAME_BYTES_MAX 2048
#define CONSOLE_WRITE_BYTES_MAX 4096
#define DISK_OP_READ 1
#define DISK_OP_WRITE 2

/* Bits of irq_pending, set by the CPL0 interrupt stubs (start.S). */
#define IRQ_TIMER 1u
#define IRQ_DISK 2u
#define IRQ_NET 4u

/* A `Buffer`: little-endian u32 length, then the bytes. */
struct net_buffer {
    uint32_t length;
    uint8_t data[NET_FRAME_BYTES_MAX];
};

/* A `DiskRequest` (32 bytes). */
struct disk_request {
    uint32_t op;
    uint32_t tag;
    uint64_t sector;
    uint32_t sectors;
    uint32_t reserved;
    uint64_t buffer_gpa;
};

_Static_assert(sizeof(struct disk_request) == 32, "DiskRequest is 32 bytes");

extern volatile uint32_t irq_pending;
extern volatile uint32_t irq_count[3];

static inline void outl(uint16_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

/* Guest-physical address of a guest object (RAM is identity-mapped). */
static inline uint32_t gpa_of(const volatile void *pointer)
{
    return (uint32_t)(uintptr_t)pointer;
}

/* Sleeps in the kernel until an interrupt is pending (returns at once if one already is). A user-mode HLT
 * traps (#GP) into the kernel, which halts on the guest's behalf (start.S). */
static inline void wait_for_interrupt(void)
{
    __asm__ volatile("hlt" : : : "memory");
}

/* Takes and clears the pending-interrupt bits (xchg is atomic against interrupts). */
static inline uint32_t take_pending(void)
{
    return __atomic_exchange_n(&irq_pending, 0, __ATOMIC_SEQ_CST);
}

static inline void yield(void) { outl(YIELD, 0); }

static inline void power_off(uint32_t status)
{
    outl(POWER_OFF, status);
}

uint64_t clock_ns(void);
uint32_t entropy(void);

/* Console output: buffered and written with one CONSOLE_WRITE exit per line. */
void print_str(const char *text);
void print_u64(uint64_t value);
void print_hex(uint64_t value);
void print_flush(void);
void net_receive(struct net_buffer *buffer);

void *memset(void *destination, int value, size_t bytes);
void *memcpy(void *destination, const void *source, size_t bytes);
int memcmp(const void *left, const void *right, size_t bytes);
void *memmove(void *destination, const void *source, size_t bytes);
int bcmp(const void *left, const void *right, size_t bytes);

#endif
