/* sse-at-cpl0: a bare guest (no corpus kernel). `xorps` at CPL0: the CPL0 emulator of the PVM hosts this project
 * runs on stops with an emulation failure (KVM_EXIT_INTERNAL_ERROR, docs/guest-abi.md). Where CPL0 runs natively
 * the instruction works, and the `ud2` after it (with an empty IDT) triple-faults instead: a failed guest either
 * way. */
    .code64
    .section .text.boot, "ax"
    .globl _start
_start:
    cli
    lidt empty_idt(%rip)
    xorps %xmm0, %xmm0
    ud2
1:  hlt
    jmp 1b

    .section .rodata
empty_idt:
    .word 0
    .quad 0
