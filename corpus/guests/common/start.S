/* The CPL0 part of every corpus guest: entry, descriptor tables, interrupt stubs.
 *
 * CPL0 code is emulated by the host (about 1000x slower than native) and cannot use SSE or x87, so everything
 * here is a handful of integer instructions: interrupt handlers only record that the vector fired, and all real
 * work happens at CPL3 (see docs/guest-abi.md). */

    .code64

    .section .text.boot, "ax"
    .globl _start
/* The VMM enters here in 64-bit long mode at CPL0 with interrupts disabled. */
_start:
    cli
    movabs $kernel_stack_top, %rsp
    call kernel_main
1:  hlt
    jmp 1b

    .text

/* load_gdt(gdtr): loads the GDT, reloads every segment register and the task register. */
    .globl load_gdt
load_gdt:
    lgdt (%rdi)
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    pushq $0x08
    lea 1f(%rip), %rax
    pushq %rax
    lretq
1:  mov $0x30, %ax
    ltr %ax
    ret

/* enter_user(rip, rsp): drops to CPL3 with IF=1 (user code does port I/O itself, see the TSS I/O bitmap). */
    .globl enter_user
enter_user:
    pushq $0x23
    pushq %rsi
    pushq $0x0202
    pushq $0x2b
    pushq %rdi
    iretq

/* The device interrupts: count the interrupt and mark it pending. No registers are touched except RFLAGS,
 * which iretq restores. */
    .globl isr_timer, isr_disk, isr_net
isr_timer:
    incl irq_count+0(%rip)
    orl $1, irq_pending(%rip)
    iretq
isr_disk:
    incl irq_count+4(%rip)
    orl $2, irq_pending(%rip)
    iretq
isr_net:
    incl irq_count+8(%rip)
    orl $4, irq_pending(%rip)
    iretq

/* #GP. A HLT executed in user mode (error code 0, CPL3, opcode 0xf4 at RIP) is the guest's "wait for an
 * interrupt" call: it is skipped and the kernel halts in its place unless an interrupt is already pending. The
 * gate clears IF, so the check and the halt are atomic (`sti; hlt` cannot lose an interrupt between them).
 * User mode has no other way into the kernel on every host: `int n` from CPL3 raises #UD and SYSCALL does not
 * reach CPL0 under PVM. Any other #GP powers off with status 0x10d. */
    .globl isr_general_protection
isr_general_protection:
    cmpq $0, (%rsp)
    jne 2f
    testb $3, 16(%rsp)
    jz 2f
    push %rax
    mov 16(%rsp), %rax
    cmpb $0xf4, (%rax)
    pop %rax
    jne 2f
    incq 8(%rsp)
    add $8, %rsp
    cmpl $0, irq_pending(%rip)
    jne 1f
    sti
    hlt
1:  iretq
2:  movl $0x10d, %eax
    jmp fatal_vector

/* Every other vector (exceptions and stray interrupts) powers the machine off with status 0x100 + vector. */
    .globl vector_stubs
    .balign 16
vector_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    movl $(0x100 + vector), %eax
    jmp fatal_vector
    .set vector, vector + 1
    .endr

fatal_vector:
    mov $0x504, %dx
    outl %eax, %dx
1:  cli
    hlt
    jmp 1b

/* Entry of user mode: runs the guest's main and powers off with its return value. */
    .globl user_start
user_start:
    call main
    mov $0x504, %dx
    outl %eax, %dx
1:  hlt
    jmp 1b

    .section .note.GNU-stack, "", @progbits
