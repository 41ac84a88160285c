/* mmio: a bare guest (no corpus kernel). The VMM's page directory at 0xb000 maps RAM with 2 MiB pages; entry 511
 * (virtual 0x3fe00000) is not used by RAM of the default size. The guest points it at guest-physical 0xd0000000,
 * where no memory slot exists, and reads from it: KVM reports an MMIO read, which this port-only ABI does not
 * have. */
    .code64
    .section .text.boot, "ax"
    .globl _start
_start:
    cli
    movabs $0xd0000087, %rax      /* 0xd0000000 | PS | US | RW | P */
    movq %rax, 0xb000 + 511 * 8
    invlpg 0x3fe00000
    movl 0x3fe00000, %eax
1:  hlt
    jmp 1b
