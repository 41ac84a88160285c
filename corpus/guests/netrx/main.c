/* netrx: the receive half of the paper's network benchmark (Table 2). It takes frames as fast as the host
 * delivers them and acknowledges them, so a sender can keep a window of frames in flight, as TCP's acks let it.
 *
 * A data frame is `peer || NetRxData || filler`: the guest counts it and folds its payload into a digest. When
 * the sender asks for an ack (a flag, set at least once per window and on the last frame of a burst), the guest
 * answers the peer with the totals so far. Everything received is an input (logged, replayed by the backup);
 * the acks are outputs (held by the Output Rule), so under FT the sender's window waits on the backup as a
 * TCP sender's does. Frames without the magic are dropped. It never powers off. */
#include "ftvm.h"

#define NETRX_MAGIC 0x3158524eu      /* "NRX1" */
#define NETRX_ACK_MAGIC 0x4158524eu  /* "NRXA" */
#define NETRX_FLAG_ACK 1u
#define PEER_BYTES 6u
#define REPORT_EVERY 65536u

struct netrx_data {
    uint32_t magic;
    uint32_t flags;
    uint64_t sequence;
} __attribute__((packed));

struct netrx_ack {
    uint32_t magic;
    uint32_t reserved;
    uint64_t sequence;
    uint64_t frames;
    uint64_t bytes;
    uint64_t digest;
} __attribute__((packed));

_Static_assert(sizeof(struct netrx_data) == 16, "data header layout");
_Static_assert(sizeof(struct netrx_ack) == 40, "ack layout");

static struct net_buffer rx_buffer __attribute__((aligned(16)));
static struct net_buffer tx_buffer __attribute__((aligned(16)));
static uint64_t frames;
static uint64_t bytes;
static uint64_t digest = 0xcbf29ce484222325ull;

/* FNV-1a over 8-byte words (and the tail byte by byte): cheap at CPL3, and it makes the payload matter to the
 * guest's state, so a frame replayed wrongly shows in the state hash. */
static void fold(const uint8_t *data, uint32_t length)
{
    uint32_t at = 0;
    for (; at + 8 <= length; at += 8) {
        uint64_t word;
        memcpy(&word, data + at, 8);
        digest = (digest ^ word) * 0x100000001b3ull;
    }
    for (; at < length; at++) {
        digest = (digest ^ data[at]) * 0x100000001b3ull;
    }
}

static void acknowledge(const uint8_t *peer, uint64_t sequence)
{
    struct netrx_ack ack = {NETRX_ACK_MAGIC, 0, sequence, frames, bytes, digest};
    memcpy(tx_buffer.data, peer, PEER_BYTES);
    memcpy(tx_buffer.data + PEER_BYTES, &ack, sizeof(ack));
    tx_buffer.length = PEER_BYTES + sizeof(ack);
    outl(NET_TX, gpa_of(&tx_buffer));
}

static void frame(void)
{
    uint32_t length = rx_buffer.length;
    if (length < PEER_BYTES + sizeof(struct netrx_data) || length > NET_FRAME_BYTES_MAX) {
        return;
    }
    struct netrx_data header;
    memcpy(&header, rx_buffer.data + PEER_BYTES, sizeof(header));
    if (header.magic != NETRX_MAGIC) {
        return;
    }
    frames++;
    bytes += length - PEER_BYTES;
    fold(rx_buffer.data + PEER_BYTES, length - PEER_BYTES);
    if (header.flags & NETRX_FLAG_ACK) {
        acknowledge(rx_buffer.data, header.sequence);
    }
    if (frames % REPORT_EVERY == 0) {
        print_str("netrx: ");
        print_u64(frames);
        print_str(" frames, ");
        print_u64(bytes);
        print_str(" bytes, digest ");
        print_hex(digest);
        print_str("\n");
    }
}

int main(void)
{
    print_str("netrx: ready\n");
    for (;;) {
        net_receive(&rx_buffer);
        frame();
    }
}
