/* The CPL0 set-up of every corpus guest: GDT with user segments and a TSS, an IDT, then a drop to CPL3.
 * Runs once at boot with interrupts disabled; the host emulates CPL0 code slowly, so it stays short. */
#include <stdint.h>

#define KERNEL_STACK_BYTES 16384
#ifndef USER_STACK_BYTES
#define USER_STACK_BYTES 65536
#endif

struct tss {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
    uint8_t iomap[0x600 / 8 + 1];
} __attribute__((packed));

struct table_register {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

struct idt_gate {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attributes;
    uint16_t offset_middle;
    uint32_t offset_high;
    uint32_t reserved;
} __attribute__((packed));

volatile uint32_t irq_pending;
volatile uint32_t irq_count[3];

uint8_t kernel_stack[KERNEL_STACK_BYTES] __attribute__((aligned(16)));
uint8_t user_stack[USER_STACK_BYTES] __attribute__((aligned(16)));
static struct tss tss;
static uint64_t gdt[8];
static struct idt_gate idt[256];

extern char vector_stubs[];
extern char isr_timer[], isr_disk[], isr_net[], isr_general_protection[];
extern char user_start[];
void load_gdt(const struct table_register *gdtr);
void enter_user(uint64_t rip, uint64_t rsp) __attribute__((noreturn));
void kernel_main(void) __attribute__((noreturn));

/* Linker-visible top of the boot stack used by _start. */
__asm__(".globl kernel_stack_top\n.set kernel_stack_top, kernel_stack + 16384\n");

static void set_gate(unsigned vector, const void *handler, unsigned dpl)
{
    uint64_t offset = (uint64_t)(uintptr_t)handler;
    idt[vector].offset_low = (uint16_t)offset;
    idt[vector].selector = 0x08;
    idt[vector].ist = 0;
    idt[vector].type_attributes = (uint8_t)(0x8e | (dpl << 5)); /* present, 64-bit interrupt gate */
    idt[vector].offset_middle = (uint16_t)(offset >> 16);
    idt[vector].offset_high = (uint32_t)(offset >> 32);
    idt[vector].reserved = 0;
}

static void set_up_gdt(void)
{
    uint64_t base = (uint64_t)(uintptr_t)&tss;
    uint64_t limit = sizeof(tss) - 1;
    gdt[0] = 0;
    gdt[1] = 0x00af9a000000ffffull; /* 0x08: kernel code, 64-bit */
    gdt[2] = 0x00cf92000000ffffull; /* 0x10: kernel data */
    gdt[3] = 0x00cffa000000ffffull; /* 0x18: user code, 32-bit (unused; keeps the SYSRET layout) */
    gdt[4] = 0x00cff2000000ffffull; /* 0x20: user data, DPL3 */
    gdt[5] = 0x00affa000000ffffull; /* 0x28: user code, 64-bit, DPL3 */
    gdt[6] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) | (((limit >> 16) & 0xf) << 48) |
             (((base >> 24) & 0xff) << 56); /* 0x30: available 64-bit TSS */
    gdt[7] = base >> 32;
    /* The I/O permission bitmap (all zero: every port below 0x600 allowed) grants user mode the ABI's ports.
     * IOPL=3 alone is not honoured by every host (PVM ignores it). */
    tss.iomap_base = __builtin_offsetof(struct tss, iomap);
    tss.iomap[sizeof(tss.iomap) - 1] = 0xff;
    tss.rsp[0] = (uint64_t)(uintptr_t)(kernel_stack + KERNEL_STACK_BYTES);
    struct table_register gdtr = {sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt};
    load_gdt(&gdtr);
}

static void set_up_idt(void)
{
    for (unsigned vector = 0; vector < 256; vector++) {
        set_gate(vector, vector_stubs + 16 * vector, 0);
    }
    set_gate(0x20, isr_timer, 0);
    set_gate(0x21, isr_disk, 0);
    set_gate(0x22, isr_net, 0);
    set_gate(13, isr_general_protection, 0);
    struct table_register idtr = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

void kernel_main(void)
{
    set_up_gdt();
    set_up_idt();
    enter_user((uint64_t)(uintptr_t)user_start, (uint64_t)(uintptr_t)(user_stack + USER_STACK_BYTES));
}
