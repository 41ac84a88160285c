/* triple-fault: a bare guest (no corpus kernel). It loads an IDT of limit 0, so that any exception finds no
 * handler, and executes `ud2`: #UD, then #GP delivering it, then #DF, then the triple fault that shuts the VM
 * down (KVM_EXIT_SHUTDOWN). */
    .code64
    .section .text.boot, "ax"
    .globl _start
_start:
    cli
    lidt empty_idt(%rip)
    ud2
1:  hlt
    jmp 1b

    .section .rodata
empty_idt:
    .word 0
    .quad 0
