/* dirty: a write-heavy guest, for re-protection's pre-copy. It writes one word into every page of an 8 MiB arena,
 * over and over, as fast as it can, so that a clone's dirty set never shrinks by itself: the clone runs its
 * passes out and the cut carries up to the whole arena. It yields every DIRTY_YIELD_EVERY pages (an exit: where a
 * cut can happen) and a 1 ms timer ticks meanwhile, as an OS kernel's does. It prints a line every
 * DIRTY_PRINT_EVERY sweeps and never powers off by itself. */
#include "ftvm.h"

#define DIRTY_PAGES 2048u
#define PAGE 4096u
#define DIRTY_YIELD_EVERY 64u
#define DIRTY_PRINT_EVERY 64u
#define DIRTY_TICK_US 1000u

static volatile uint64_t arena[DIRTY_PAGES * PAGE / 8] __attribute__((aligned(4096)));

int main(void)
{
    uint64_t sweeps = 0;
    uint64_t ticks = 0;
    print_str("dirty: start\n");
    outl(TIMER_PERIOD_US, DIRTY_TICK_US);
    for (;;) {
        for (uint32_t page = 0; page < DIRTY_PAGES; page++) {
            arena[page * (PAGE / 8) + (sweeps % (PAGE / 8))] = sweeps ^ page;
            if (page % DIRTY_YIELD_EVERY == DIRTY_YIELD_EVERY - 1) {
                yield();
                ticks += (take_pending() & IRQ_TIMER) != 0;
            }
        }
        sweeps++;
        if (sweeps % DIRTY_PRINT_EVERY == 0) {
            print_str("dirty: sweeps=");
            print_u64(sweeps);
            print_str(" ticks=");
            print_u64(ticks);
            print_str("\n");
        }
    }
}
