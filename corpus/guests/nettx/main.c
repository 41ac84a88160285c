/* nettx: the transmit half of the paper's network benchmark (Table 2). It waits for a request, then transmits
 * a burst of frames to the requester as fast as it can, and ends the burst with a frame that carries its totals.
 *
 * A request is `peer || NetTxRequest`: how many frames, and how many payload bytes each (at least the header,
 * at most a frame). Every data frame is `NetTxData || pattern`, the pattern a function of the burst and the
 * frame's number, so the receiver can check what it got. Each transmit is one exit and one output: under FT it
 * is logged as a digest and held until the backup acknowledges it, while the guest goes on transmitting. Frames
 * without the magic are dropped. It never powers off. */
#include "ftvm.h"

#define NETTX_REQUEST_MAGIC 0x5158544eu /* "NTXQ" */
#define NETTX_DATA_MAGIC 0x4458544eu    /* "NTXD" */
#define NETTX_END_MAGIC 0x4558544eu     /* "NTXE" */
#define PEER_BYTES 6u
#define FRAMES_MAX (1u << 24)

struct nettx_request {
    uint32_t magic;
    uint32_t frames;
    uint32_t payload_bytes;
    uint32_t burst;
} __attribute__((packed));

struct nettx_data {
    uint32_t magic;
    uint32_t burst;
    uint64_t sequence;
} __attribute__((packed));

struct nettx_end {
    uint32_t magic;
    uint32_t burst;
    uint64_t frames;
    uint64_t bytes;
} __attribute__((packed));

_Static_assert(sizeof(struct nettx_request) == 16, "request layout");
_Static_assert(sizeof(struct nettx_data) == 16, "data header layout");
_Static_assert(sizeof(struct nettx_end) == 24, "end layout");

static struct net_buffer rx_buffer __attribute__((aligned(16)));
static struct net_buffer tx_buffer __attribute__((aligned(16)));
static uint64_t bursts;

static void transmit(uint32_t payload_bytes)
{
    tx_buffer.length = PEER_BYTES + payload_bytes;
    outl(NET_TX, gpa_of(&tx_buffer));
}

static void burst(const uint8_t *peer, const struct nettx_request *request)
{
    uint32_t payload = request->payload_bytes;
    if (payload < sizeof(struct nettx_data)) {
        payload = sizeof(struct nettx_data);
    }
    if (payload > NET_FRAME_BYTES_MAX - PEER_BYTES) {
        payload = NET_FRAME_BYTES_MAX - PEER_BYTES;
    }
    uint32_t count = request->frames < FRAMES_MAX ? request->frames : FRAMES_MAX;
    memcpy(tx_buffer.data, peer, PEER_BYTES);
    uint8_t *body = tx_buffer.data + PEER_BYTES;
    for (uint32_t at = sizeof(struct nettx_data); at < payload; at++) {
        body[at] = (uint8_t)(at * 7u + request->burst);
    }
    uint64_t bytes = 0;
    for (uint32_t sequence = 0; sequence < count; sequence++) {
        struct nettx_data header = {NETTX_DATA_MAGIC, request->burst, sequence};
        memcpy(body, &header, sizeof(header));
        transmit(payload);
        bytes += payload;
    }
    struct nettx_end end = {NETTX_END_MAGIC, request->burst, count, bytes};
    memcpy(body, &end, sizeof(end));
    transmit(sizeof(end));
    bursts++;
    print_str("nettx: burst ");
    print_u64(bursts);
    print_str(": ");
    print_u64(count);
    print_str(" frames, ");
    print_u64(bytes);
    print_str(" bytes\n");
}

int main(void)
{
    print_str("nettx: ready\n");
    for (;;) {
        net_receive(&rx_buffer);
        uint32_t length = rx_buffer.length;
        if (length != PEER_BYTES + sizeof(struct nettx_request)) {
            continue;
        }
        struct nettx_request request;
        memcpy(&request, rx_buffer.data + PEER_BYTES, sizeof(request));
        if (request.magic == NETTX_REQUEST_MAGIC) {
            uint8_t peer[PEER_BYTES];
            memcpy(peer, rx_buffer.data, PEER_BYTES);
            burst(peer, &request);
        }
    }
}
