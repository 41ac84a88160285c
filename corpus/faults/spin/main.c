/* spin: prints one line, then loops forever at CPL3 without a single exit (no port I/O, no HLT, no timer). The
 * vCPU stays inside KVM_RUN for good: only a kick from the host (a signal with immediate_exit) gets it out, which
 * is what `ftvm run --timeout-ms` must do. */
#include "ftvm.h"

int main(void)
{
    print_str("spin: looping at CPL3 without exits\n");
    for (;;) {
        /* An empty asm statement keeps the loop (C allows an infinite loop with a constant condition anyway). */
        __asm__ volatile("");
    }
    return 0;
}
