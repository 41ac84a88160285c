/* timer: a timer-, clock- and entropy-heavy guest. Programs a 1 ms periodic timer, sleeps in HLT between ticks,
 * reads the clock and entropy devices on every tick, checks that the clock never goes backwards, prints a digest
 * every TIMER_PRINT_EVERY ticks and powers off after TIMER_TICKS ticks. */
#include "ftvm.h"

#define TIMER_TICKS 2000u
#define TIMER_PRINT_EVERY 200u
#define TIMER_PERIOD 1000u

static uint64_t mix(uint64_t digest, uint64_t value)
{
    digest ^= value;
    digest *= 0x100000001b3ull;
    digest ^= digest >> 29;
    return digest;
}

int main(void)
{
    uint64_t digest = 0xcbf29ce484222325ull;
    uint64_t clock_last = 0;
    uint32_t ticks_printed = 0;
    print_str("timer: start\n");
    outl(TIMER_PERIOD_US, TIMER_PERIOD);
    for (;;) {
        wait_for_interrupt();
        uint32_t pending = take_pending();
        if ((pending & IRQ_TIMER) == 0) {
            continue;
        }
        uint32_t ticks = irq_count[0];
        for (int read = 0; read < 2; read++) {
            uint64_t now = clock_ns();
            if (now < clock_last) {
                print_str("timer: clock went backwards\n");
                return 2;
            }
            clock_last = now;
            digest = mix(digest, now);
            digest = mix(digest, entropy());
        }
        if (ticks / TIMER_PRINT_EVERY != ticks_printed / TIMER_PRINT_EVERY) {
            ticks_printed = ticks;
            print_str("timer: ticks=");
            print_u64(ticks);
            print_str(" clock_ns=");
            print_u64(clock_last);
            print_str(" digest=");
            print_hex(digest);
            print_str("\n");
        }
        if (ticks >= TIMER_TICKS) {
            break;
        }
    }
    outl(TIMER_PERIOD_US, 0);
    print_str("timer: done ticks=");
    print_u64(irq_count[0]);
    print_str(" digest=");
    print_hex(digest);
    print_str("\n");
    return 0;
}
