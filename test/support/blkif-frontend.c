/*
 * A blkif frontend built on Xen's own headers (Debian libxen-dev: xen/io/ring.h, xen/io/blkif.h),
 * the independent judge of tandem's ring layouts: test/blkif-ring.test.ts compiles it with gcc
 * (x86_64 ABI) and gcc -m32 (x86_32 ABI), runs it, and checks that tandem's parser decodes
 * exactly the requests this program says it wrote.
 *
 *   blkif-frontend PAGES START COUNT SEED SECTORS
 *
 * Initialises a ring of PAGES pages with SHARED_RING_INIT, attaches a front ring at index START
 * (so indices can wrap around 2^32), fills COUNT requests of seeded random kinds with
 * RING_GET_REQUEST, publishes them with RING_PUSH_REQUESTS, and writes the shared pages to
 * stdout. On stderr: one `layout` line (sizes and offsets as this compiler lays them out), then
 * one `req` line per request with its fields and the status a backend with SECTORS sectors,
 * flush and discard, no barrier and 256 indirect segments should give it.
 */

#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ring.h's barriers for interface version 0 come from the includer. */
#define mb() __sync_synchronize()
#define rmb() __sync_synchronize()
#define wmb() __sync_synchronize()

#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

#define PAGE 4096
#define MAX_INDIRECT 256

static uint64_t state;

/* splitmix64: the same sequence under -m32 and -m64. */
static uint64_t next(void) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static unsigned below(unsigned n) { return (unsigned)(next() % n); }

/* Fills nseg valid segments; returns their total sectors. */
static unsigned fill_segments(blkif_request_t *req, unsigned nseg) {
    unsigned total = 0;
    for (unsigned s = 0; s < nseg; s++) {
        unsigned first = below(8);
        unsigned last = first + below(8 - first);
        req->seg[s].gref = (grant_ref_t)next();
        req->seg[s].first_sect = (uint8_t)first;
        req->seg[s].last_sect = (uint8_t)last;
        total += last - first + 1;
    }
    return total;
}

static void print_segments(const blkif_request_t *req, unsigned nseg) {
    fprintf(stderr, " segs=");
    for (unsigned s = 0; s < nseg && s < BLKIF_MAX_SEGMENTS_PER_REQUEST; s++) {
        fprintf(stderr, "%s%" PRIu32 ":%u:%u", s ? "," : "", (uint32_t)req->seg[s].gref,
                req->seg[s].first_sect, req->seg[s].last_sect);
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PAGES START COUNT SEED SECTORS\n", argv[0]);
        return 2;
    }
    unsigned pages = (unsigned)strtoul(argv[1], NULL, 0);
    RING_IDX start = (RING_IDX)strtoul(argv[2], NULL, 0);
    unsigned count = (unsigned)strtoul(argv[3], NULL, 0);
    state = strtoull(argv[4], NULL, 0);
    uint64_t sectors = strtoull(argv[5], NULL, 0);
    if (pages < 1 || pages > 16 || sectors < 100) {
        fprintf(stderr, "PAGES must be 1..16 and SECTORS at least 100\n");
        return 2;
    }

    unsigned char *shared = malloc(pages * PAGE);
    if (!shared) return 1;
    memset(shared, 0xa5, pages * PAGE); /* stale bytes: a backend must not depend on them */
    blkif_sring_t *sring = (blkif_sring_t *)shared;
    blkif_front_ring_t front;
    SHARED_RING_INIT(sring);
    FRONT_RING_ATTACH(&front, sring, start, pages * PAGE);
    sring->req_prod = start; /* as if START requests had come and gone */
    if (count > RING_SIZE(&front)) {
        fprintf(stderr, "COUNT %u is more than the ring's %u entries\n", count, RING_SIZE(&front));
        return 2;
    }

    fprintf(stderr, "layout entries=%u entry=%zu id=%zu sector=%zu seg=%zu discard_nr=%zu"
            " indirect_handle=%zu indirect_grefs=%zu response=%zu rsp_status=%zu\n",
            RING_SIZE(&front), sizeof(union blkif_sring_entry), offsetof(blkif_request_t, id),
            offsetof(blkif_request_t, sector_number), offsetof(blkif_request_t, seg),
            offsetof(struct blkif_request_discard, nr_sectors), offsetof(struct blkif_request_indirect, handle),
            offsetof(struct blkif_request_indirect, indirect_grefs), sizeof(blkif_response_t),
            offsetof(blkif_response_t, status));

    static const uint8_t unknown_ops[] = { BLKIF_OP_WRITE_BARRIER, BLKIF_OP_RESERVED_1, 7, 200 };
    for (unsigned i = 0; i < count; i++) {
        RING_IDX idx = front.req_prod_pvt++;
        blkif_request_t *req = RING_GET_REQUEST(&front, idx);
        uint64_t id = next();
        uint16_t handle = (uint16_t)next();
        const char *expect = "ok";
        unsigned kind = below(12);
        if (kind == 5) { /* discard */
            struct blkif_request_discard *d = (struct blkif_request_discard *)req;
            uint64_t n = below(64);
            d->operation = BLKIF_OP_DISCARD;
            d->flag = (uint8_t)below(2);
            d->handle = handle;
            d->id = id;
            d->sector_number = below((unsigned)(sectors - n + 1));
            d->nr_sectors = n;
            if (below(4) == 0) { d->sector_number = sectors - n + 1; expect = "out_of_range"; }
            fprintf(stderr, "req idx=%u op=%u handle=%u id=%" PRIu64 " sector=%" PRIu64 " flag=%u nr_sectors=%" PRIu64 " expect=%s\n",
                    idx, d->operation, d->handle, d->id, d->sector_number, d->flag, d->nr_sectors, expect);
            continue;
        }
        if (kind == 6) { /* indirect */
            struct blkif_request_indirect *r = (struct blkif_request_indirect *)req;
            unsigned n = below(3) == 0 ? MAX_INDIRECT + 1 + below(8 * 512 - MAX_INDIRECT) : 1 + below(MAX_INDIRECT);
            r->operation = BLKIF_OP_INDIRECT;
            r->indirect_op = (uint8_t)below(2);
            r->nr_segments = (uint16_t)n;
            r->id = id;
            r->sector_number = next() % sectors;
            r->handle = handle;
            for (unsigned g = 0; g < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; g++) r->indirect_grefs[g] = (grant_ref_t)next();
            unsigned used = (n + 511) / 512;
            expect = n > MAX_INDIRECT ? "bad_segment_count" : "ok";
            fprintf(stderr, "req idx=%u op=%u handle=%u id=%" PRIu64 " sector=%" PRIu64 " iop=%u nr=%u grefs=",
                    idx, r->operation, r->handle, r->id, r->sector_number, r->indirect_op, n);
            for (unsigned g = 0; g < used; g++) fprintf(stderr, "%s%" PRIu32, g ? "," : "", (uint32_t)r->indirect_grefs[g]);
            fprintf(stderr, " expect=%s\n", expect);
            continue;
        }
        req->handle = handle;
        req->id = id;
        unsigned nseg = 1 + below(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        req->operation = (uint8_t)below(2); /* read or write */
        switch (kind) {
        case 4: /* a pure flush */
            req->operation = BLKIF_OP_FLUSH_DISKCACHE;
            nseg = 0;
            break;
        case 7: /* a segment ending past its page, or running backwards */
            break;
        case 8: /* more segments than a request holds */
            nseg = 12 + below(244);
            expect = "bad_segment_count";
            break;
        case 10:
            req->operation = unknown_ops[below(sizeof unknown_ops)];
            expect = "unsupported_op";
            break;
        case 11:
            nseg = 0;
            expect = "bad_segment_count";
            break;
        }
        unsigned total = fill_segments(req, nseg < BLKIF_MAX_SEGMENTS_PER_REQUEST ? nseg : BLKIF_MAX_SEGMENTS_PER_REQUEST);
        req->nr_segments = (uint8_t)nseg;
        req->sector_number = below((unsigned)(sectors - total + 1));
        if (kind == 7) {
            unsigned s = below(nseg);
            if (below(2)) req->seg[s].last_sect = 8;
            else { req->seg[s].first_sect = 7; req->seg[s].last_sect = (uint8_t)below(7); }
            expect = "bad_segment";
        } else if (kind == 9) {
            req->sector_number = below(2) ? sectors - total + 1 + below(100) : UINT64_MAX - below(50);
            expect = "out_of_range";
        }
        fprintf(stderr, "req idx=%u op=%u handle=%u id=%" PRIu64 " sector=%" PRIu64 " nr=%u",
                idx, req->operation, req->handle, req->id, req->sector_number, nseg);
        if (kind != 10) print_segments(req, nseg);
        fprintf(stderr, " expect=%s\n", expect);
    }
    RING_PUSH_REQUESTS(&front);

    if (fwrite(shared, 1, pages * PAGE, stdout) != pages * PAGE) return 1;
    free(shared);
    return 0;
}
