/* kv: the key-value service of ft/src/kv.rs over the network device, persisted on the block device.
 *
 * Boot: read the records of all KEYS keys (sectors 1..=KEYS) in one request and rebuild the table; the version
 * (puts applied) is the largest version found. Then serve frames forever: GET answers from memory, PUT writes
 * the key's sector, waits for the disk completion interrupt and only then applies the put and transmits the
 * response. Frames that are not `peer || request` with the right magic and op are dropped. */
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
_Static_assert(sizeof(struct kv_record) == 32, "record layout");

static uint64_t table[KV_KEYS];
static uint64_t version;
static uint32_t interrupts_seen;
static uint32_t disk_tag;

static struct net_buffer rx_buffer __attribute__((aligned(16)));
static struct net_buffer tx_buffer __attribute__((aligned(16)));
static struct disk_request request __attribute__((aligned(16)));
static uint8_t disk_buffer[KV_KEYS * SECTOR_BYTES] __attribute__((aligned(4096)));

/* Waits until one of `mask`'s interrupts has fired, keeping the others for later. */
static void wait_for(uint32_t mask)
{
    for (;;) {
        interrupts_seen |= take_pending();
        if (interrupts_seen & mask) {
            interrupts_seen &= ~mask;
            return;
        }
        wait_for_interrupt();
    }
}

/* Submits one disk request and waits for its completion; returns its DISK_STATUS. */
static uint32_t disk_transfer(uint32_t op, uint64_t sector, uint32_t sectors)
{
    disk_tag++;
    request.op = op;
    request.tag = disk_tag;
    request.sector = sector;
    request.sectors = sectors;
    request.reserved = 0;
    request.buffer_gpa = gpa_of(disk_buffer);
    outl(DISK_SUBMIT, gpa_of(&request));
    for (;;) {
        uint32_t tag = inl(DISK_COMPLETION);
        if (tag == DISK_NONE) {
            wait_for(IRQ_DISK);
            continue;
        }
        uint32_t status = inl(DISK_STATUS);
        if (tag == disk_tag) {
            return status;
        }
    }
}

static void recover(void)
{
    if (inl(DISK_SECTORS) < 1 + KV_KEYS) {
        print_str("kv: disk too small\n");
        power_off(4);
    }
    uint32_t status = disk_transfer(DISK_OP_READ, 1, KV_KEYS);
    if (status != 0) {
        print_str("kv: recovery read failed\n");
        power_off(3);
    }
    uint64_t keys = 0;
    for (uint32_t key = 0; key < KV_KEYS; key++) {
        const struct kv_record *record = (const struct kv_record *)(disk_buffer + key * SECTOR_BYTES);
        if (record->magic != KV_MAGIC || record->key != key) {
            continue;
        }
        table[key] = record->value;
        if (record->version > version) {
            version = record->version;
        }
        keys++;
    }
    print_str("kv: recovered keys=");
    print_u64(keys);
    print_str(" version=");
    print_u64(version);
    print_str("\n");
}

/* Persists key's new record; returns the response status. */
static uint32_t put(uint64_t key, uint64_t value)
{
    struct kv_record *record = (struct kv_record *)disk_buffer;
    memset(disk_buffer, 0, SECTOR_BYTES);
    record->magic = KV_MAGIC;
    record->key = key;
    record->value = value;
    record->version = version + 1;
    if (disk_transfer(DISK_OP_WRITE, 1 + key, 1) != 0) {
        return KV_STATUS_IO_ERROR;
    }
    table[key] = value;
    version++;
    return KV_STATUS_OK;
}

static void serve(void)
{
    uint32_t length = rx_buffer.length;
    if (length != KV_PEER_BYTES + KV_REQUEST_BYTES) {
        return;
    }
    struct kv_request in;
    memcpy(&in, rx_buffer.data + KV_PEER_BYTES, sizeof(in));
    if (in.magic != KV_MAGIC || (in.op != KV_OP_PUT && in.op != KV_OP_GET)) {
        return;
    }
    struct kv_response out;
    memset(&out, 0, sizeof(out));
    out.magic = KV_MAGIC;
    out.op = in.op;
    out.client = in.client;
    out.request = in.request;
    out.key = in.key;
    if (in.key >= KV_KEYS) {
        out.status = KV_STATUS_BAD_REQUEST;
    } else if (in.op == KV_OP_PUT) {
        out.status = put(in.key, in.value);
        out.value = in.value;
    } else {
        out.status = KV_STATUS_OK;
        out.value = table[in.key];
    }
    out.version = version;
    memcpy(tx_buffer.data, rx_buffer.data, KV_PEER_BYTES);
    memcpy(tx_buffer.data + KV_PEER_BYTES, &out, sizeof(out));
    tx_buffer.length = KV_PEER_BYTES + KV_RESPONSE_BYTES;
    outl(NET_TX, gpa_of(&tx_buffer));
}

int main(void)
{
    print_str("kv: start\n");
    recover();
    for (;;) {
        rx_buffer.length = 0;
        outl(NET_RX_POST, gpa_of(&rx_buffer));
        wait_for(IRQ_NET);
        serve();
    }
}
