/* cpu: a CPU-bound guest. A long integer computation at native speed (CPL3) that yields every
 * CPU_YIELD_EVERY iterations so that pending interrupts can be delivered, then prints its result and powers off.
 * kvm-backend's tests recompute the result (corpus::cpu_expected_result) to check the run.
 *
 * A 1 ms timer ticks meanwhile, as an OS kernel's does (HZ=1000): its interrupts are the log traffic of a
 * CPU-bound guest, and what lets the primary see how far its backup's replay lags (the paper: the log and ack
 * traffic is regular because timer interrupts are logged). */
#include "ftvm.h"

#define CPU_ITERATIONS (1ull << 28)
#define CPU_YIELD_EVERY (1ull << 21)
#define CPU_TICK_US 1000u

int main(void)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;
    uint64_t accumulator = 0;
    uint64_t ticks = 0;
    print_str("cpu: start\n");
    outl(TIMER_PERIOD_US, CPU_TICK_US);
    for (uint64_t i = 0; i < CPU_ITERATIONS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        accumulator += x * (i | 1);
        accumulator = (accumulator << 5) | (accumulator >> 59);
        if ((i & (CPU_YIELD_EVERY - 1)) == CPU_YIELD_EVERY - 1) {
            yield();
            ticks += (take_pending() & IRQ_TIMER) != 0;
        }
    }
    outl(TIMER_PERIOD_US, 0);
    print_str("cpu: iterations=");
    print_u64(CPU_ITERATIONS);
    print_str(" result=");
    print_hex(accumulator);
    print_str(" ticks-seen=");
    print_u64(ticks);
    print_str("\n");
    return 0;
}
