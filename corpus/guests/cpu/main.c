/* cpu: a CPU-bound guest. A long integer computation at native speed (CPL3) that yields every
 * CPU_YIELD_EVERY iterations so that pending interrupts can be delivered, then prints its result and powers off.
 * kvm-backend's tests recompute the result (corpus::cpu_expected_result) to check the run. */
#include "ftvm.h"

#define CPU_ITERATIONS (1ull << 28)
#define CPU_YIELD_EVERY (1ull << 21)

int main(void)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;
    uint64_t accumulator = 0;
    print_str("cpu: start\n");
    for (uint64_t i = 0; i < CPU_ITERATIONS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        accumulator += x * (i | 1);
        accumulator = (accumulator << 5) | (accumulator >> 59);
        if ((i & (CPU_YIELD_EVERY - 1)) == CPU_YIELD_EVERY - 1) {
            yield();
        }
    }
    print_str("cpu: iterations=");
    print_u64(CPU_ITERATIONS);
    print_str(" result=");
    print_hex(accumulator);
    print_str("\n");
    return 0;
}
