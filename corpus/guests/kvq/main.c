/* kvq: the key-value service of ft/src/kv.rs with up to SLOTS requests in flight (the model guest's `kvq`,
 * corpus/model/src/program/kvq.rs, is the same program).
 *
 * Where `kv` serves one request at a time, kvq keeps several outstanding, so the disk sees what a real server
 * gives it: overlapping writes to one key, reads right after writes of the same sector, multi-sector
 * requests, and tags reused out of order (a request's tag is its slot number).
 *
 * - PUT writes the key's record sector; every fourth PUT rewrites the whole aligned block of BLOCK_SECTORS
 *   record sectors around the key from the in-memory table. Answered when the write completes.
 * - GET reads that block and answers with the record it finds. The guest knows what it wrote before: a read
 *   that returns anything else than the value of the last PUT submitted for the key is answered
 *   KV_STATUS_INCONSISTENT (storage, or the protocol in front of it, reordered or lost a write).
 * - Boot reads every record sector and rebuilds the table; the version is the largest found.
 *
 * While every slot is busy the receive buffer is not posted, so frames wait in the host (flow control). */
#include "ftvm.h"

#define KV_MAGIC 0x3130564bu
#define KV_KEYS 64u
#define KV_PEER_BYTES 6u
#define KV_REQUEST_BYTES 40u
#define KV_RESPONSE_BYTES 48u
#define KV_OP_PUT 1u
#define KV_OP_GET 2u
#define KV_STATUS_OK 0u
#define KV_STATUS_BAD_REQUEST 1u
#define KV_STATUS_IO_ERROR 2u
#define KV_STATUS_INCONSISTENT 3u

#define SLOTS 8u
#define BLOCK_SECTORS 4u
#define FIRST_SLOT_TAG 16u
#define BLOCK_PUT_EVERY 4u
#define REPORT_EVERY 100u

struct kv_request {
    uint32_t magic;
    uint32_t op;
    uint32_t client;
    uint32_t reserved;
    uint64_t request;
    uint64_t key;
    uint64_t value;
} __attribute__((packed));

struct kv_response {
    uint32_t magic;
    uint32_t op;
    uint32_t client;
    uint32_t status;
    uint64_t request;
    uint64_t key;
    uint64_t value;
    uint64_t version;
} __attribute__((packed));

struct kv_record {
    uint32_t magic;
    uint32_t reserved;
    uint64_t key;
    uint64_t value;
    uint64_t version;
} __attribute__((packed));

_Static_assert(sizeof(struct kv_request) == KV_REQUEST_BYTES, "request layout");
_Static_assert(sizeof(struct kv_response) == KV_RESPONSE_BYTES, "response layout");

struct entry {
    uint64_t value;
    uint64_t version;
    uint32_t known; /* whether the guest knows what the disk holds for the key */
};

struct slot {
    uint32_t busy;
    uint8_t peer[KV_PEER_BYTES];
    struct kv_request request;
    uint64_t expected; /* GET: the value of the last PUT submitted for the key */
    uint32_t known;
    uint64_t version; /* PUT: its version */
    struct disk_request descriptor __attribute__((aligned(16)));
    uint8_t buffer[BLOCK_SECTORS * SECTOR_BYTES] __attribute__((aligned(512)));
};

static struct entry table[KV_KEYS];
static struct slot slots[SLOTS];
static uint64_t puts;
static uint64_t served;
static uint64_t inconsistent;
static uint32_t rx_posted;

static struct net_buffer rx_buffer __attribute__((aligned(16)));
static struct net_buffer tx_buffer __attribute__((aligned(16)));
static struct disk_request boot_request __attribute__((aligned(16)));
static uint8_t boot_buffer[KV_KEYS * SECTOR_BYTES] __attribute__((aligned(4096)));

static uint32_t block_of(uint64_t key)
{
    return (uint32_t)((1 + key) / BLOCK_SECTORS * BLOCK_SECTORS);
}

static void write_record(uint8_t *at, uint64_t key, uint64_t value, uint64_t version)
{
    struct kv_record *record = (struct kv_record *)at;
    memset(at, 0, SECTOR_BYTES);
    record->magic = KV_MAGIC;
    record->key = key;
    record->value = value;
    record->version = version;
}

static void recover(void)
{
    if (inl(DISK_SECTORS) < 1 + KV_KEYS + BLOCK_SECTORS) {
        print_str("kvq: disk too small\n");
        power_off(4);
    }
    boot_request.op = DISK_OP_READ;
    boot_request.tag = 1;
    boot_request.sector = 1;
    boot_request.sectors = KV_KEYS;
    boot_request.reserved = 0;
    boot_request.buffer_gpa = gpa_of(boot_buffer);
    outl(DISK_SUBMIT, gpa_of(&boot_request));
    uint32_t status;
    for (;;) {
        uint32_t tag = inl(DISK_COMPLETION);
        if (tag == DISK_NONE) {
            while (!(take_pending() & IRQ_DISK)) {
                wait_for_interrupt();
            }
            continue;
        }
        status = inl(DISK_STATUS);
        if (tag == 1) {
            break;
        }
    }
    if (status != 0) {
        print_str("kvq: recovery read failed\n");
        power_off(3);
    }
    uint64_t keys = 0;
    for (uint32_t key = 0; key < KV_KEYS; key++) {
        const struct kv_record *record = (const struct kv_record *)(boot_buffer + key * SECTOR_BYTES);
        table[key].known = 1;
        if (record->magic != KV_MAGIC || record->key != key) {
            continue;
        }
        table[key].value = record->value;
        table[key].version = record->version;
        if (record->version > puts) {
            puts = record->version;
        }
        keys++;
    }
    print_str("kvq: ready, ");
    print_u64(keys);
    print_str(" keys recovered, 8 slots\n");
}

static int free_slot(void)
{
    for (uint32_t slot = 0; slot < SLOTS; slot++) {
        if (!slots[slot].busy) {
            return (int)slot;
        }
    }
    return -1;
}

static void respond(struct slot *slot, uint32_t status, uint64_t value, uint64_t version)
{
    struct kv_response out;
    memset(&out, 0, sizeof(out));
    out.magic = KV_MAGIC;
    out.op = slot->request.op;
    out.client = slot->request.client;
    out.status = status;
    out.request = slot->request.request;
    out.key = slot->request.key;
    out.value = value;
    out.version = version;
    memcpy(tx_buffer.data, slot->peer, KV_PEER_BYTES);
    memcpy(tx_buffer.data + KV_PEER_BYTES, &out, sizeof(out));
    tx_buffer.length = KV_PEER_BYTES + KV_RESPONSE_BYTES;
    outl(NET_TX, gpa_of(&tx_buffer));
    slot->busy = 0;
    served++;
    if (served % REPORT_EVERY == 0) {
        print_str("kvq: ");
        print_u64(served);
        print_str(" answers, ");
        print_u64(puts);
        print_str(" puts, ");
        print_u64(inconsistent);
        print_str(" inconsistent reads\n");
    }
}

static void submit(uint32_t index)
{
    struct slot *slot = &slots[index];
    uint64_t key = slot->request.key;
    struct disk_request *descriptor = &slot->descriptor;
    descriptor->tag = FIRST_SLOT_TAG + index;
    descriptor->reserved = 0;
    descriptor->buffer_gpa = gpa_of(slot->buffer);
    if (slot->request.op == KV_OP_PUT) {
        puts++;
        slot->version = puts;
        table[key].value = slot->request.value;
        table[key].version = puts;
        table[key].known = 1;
        descriptor->op = DISK_OP_WRITE;
        if (puts % BLOCK_PUT_EVERY == 0) {
            uint32_t block = block_of(key);
            for (uint32_t i = 0; i < BLOCK_SECTORS; i++) {
                uint32_t sector = block + i;
                uint8_t *at = slot->buffer + i * SECTOR_BYTES;
                if (sector >= 1 && sector - 1 < KV_KEYS && table[sector - 1].version != 0) {
                    write_record(at, sector - 1, table[sector - 1].value, table[sector - 1].version);
                } else {
                    memset(at, 0, SECTOR_BYTES);
                }
            }
            descriptor->sector = block;
            descriptor->sectors = BLOCK_SECTORS;
        } else {
            write_record(slot->buffer, key, slot->request.value, puts);
            descriptor->sector = 1 + key;
            descriptor->sectors = 1;
        }
    } else {
        slot->expected = table[key].value;
        slot->known = table[key].known;
        descriptor->op = DISK_OP_READ;
        descriptor->sector = block_of(key);
        descriptor->sectors = BLOCK_SECTORS;
    }
    outl(DISK_SUBMIT, gpa_of(descriptor));
}

static void complete(uint32_t index, uint32_t status)
{
    struct slot *slot = &slots[index];
    uint64_t key = slot->request.key;
    if (status != 0) {
        table[key].known = 0;
        respond(slot, KV_STATUS_IO_ERROR, 0, puts);
        return;
    }
    if (slot->request.op == KV_OP_PUT) {
        respond(slot, KV_STATUS_OK, slot->request.value, slot->version);
        return;
    }
    const struct kv_record *record =
        (const struct kv_record *)(slot->buffer + (1 + key - block_of(key)) * SECTOR_BYTES);
    uint64_t value = (record->magic == KV_MAGIC && record->key == key) ? record->value : 0;
    if (slot->known && value != slot->expected) {
        inconsistent++;
        respond(slot, KV_STATUS_INCONSISTENT, value, puts);
        return;
    }
    respond(slot, KV_STATUS_OK, value, puts);
}

static void drain(void)
{
    for (;;) {
        uint32_t tag = inl(DISK_COMPLETION);
        if (tag == DISK_NONE) {
            return;
        }
        uint32_t status = inl(DISK_STATUS);
        uint32_t index = tag - FIRST_SLOT_TAG;
        if (index < SLOTS && slots[index].busy) {
            complete(index, status);
        }
    }
}

/* A frame is in the receive buffer: take a slot for it, or drop it if it is not a request. */
static void frame(void)
{
    rx_posted = 0;
    uint32_t length = rx_buffer.length;
    if (length != KV_PEER_BYTES + KV_REQUEST_BYTES) {
        return;
    }
    struct kv_request in;
    memcpy(&in, rx_buffer.data + KV_PEER_BYTES, sizeof(in));
    if (in.magic != KV_MAGIC || (in.op != KV_OP_PUT && in.op != KV_OP_GET)) {
        return;
    }
    int index = free_slot();
    if (index < 0) {
        return; /* cannot happen: the buffer is posted only while a slot is free */
    }
    struct slot *slot = &slots[index];
    slot->busy = 1;
    memcpy(slot->peer, rx_buffer.data, KV_PEER_BYTES);
    slot->request = in;
    if (in.key >= KV_KEYS) {
        respond(slot, KV_STATUS_BAD_REQUEST, 0, puts);
        return;
    }
    submit((uint32_t)index);
}

int main(void)
{
    print_str("kvq: start\n");
    recover();
    for (;;) {
        if (!rx_posted && free_slot() >= 0) {
            rx_buffer.length = 0xffffffffu;
            rx_posted = 1;
            outl(NET_RX_POST, gpa_of(&rx_buffer));
        }
        uint32_t pending = take_pending();
        if (pending & IRQ_DISK) {
            drain();
        }
        if ((pending & IRQ_NET) && rx_posted && rx_buffer.length != 0xffffffffu) {
            frame();
        }
        if (pending == 0) {
            wait_for_interrupt();
        }
    }
}
