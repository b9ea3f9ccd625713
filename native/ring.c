/*
 * ring.c - claim, publish, read, wait and reap on a partition ring.
 * The layout and the publication protocol are drawn in ring.h.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <sched.h>

#include "atomic.h"
#include "ring.h"

#define SPIN_LIMIT 256
#define REAP_CHECK_NS 10000000LL /* a stalled reader checks for torn claims every 10 ms */
#define RESCAN_NS 1000000LL      /* an unstamped claim's extent is confirmed after 1 ms */

/* ---- process identity (reset in a forked child) ------------------------ */

static uint32_t cached_pid = 0;
static void reset_pid(void) { cached_pid = 0; }
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, reset_pid); }
static inline uint32_t self_pid(void) {
    if (!cached_pid) {
        pthread_once(&atfork_once, register_atfork);
        cached_pid = (uint32_t)getpid();
    }
    return cached_pid;
}

static int pid_is_dead(uint32_t pid) {
    if (pid == 0) return 1;
    if (kill((pid_t)pid, 0) == -1 && errno == ESRCH) return 1;
    /* A killed child its parent has not waited for yet is a zombie: dead. */
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' && (close_paren[2] == 'Z' || close_paren[2] == 'X');
}

/* ---- time and futex ---------------------------------------------------- */

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts = {.tv_sec = timeout_ns / 1000000000LL, .tv_nsec = timeout_ns % 1000000000LL};
    syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void futex_wake_all(uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Eventcount wake: the writer's change is visible before it reads waiters. */
static inline void wake(uint32_t *seq, uint32_t *waiters) {
    engine_fence();
    if (engine_load_relaxed_u32(waiters)) {
        engine_fetch_add_u32(seq, 1);
        futex_wake_all(seq);
    }
}

/* ---- layout arithmetic ------------------------------------------------- */

static inline struct engine_ring_header *header_of(void *region) { return region; }
static inline uint64_t align8(uint64_t n) { return (n + 7) & ~7ull; }
static inline struct engine_frame_header *frame_at(void *region, uint64_t capacity,
                                                   uint64_t position) {
    return (struct engine_frame_header *)((uint8_t *)region + ENGINE_RING_HEADER_LENGTH +
                                          (position & (capacity - 1)));
}
static inline uint64_t tag_position(uint64_t tag) { return tag & ~7ull; }
static inline uint32_t tag_state(uint64_t tag) { return (uint32_t)(tag & 7); }
/* A tag is this frame's own when it names the position and a live state. */
static inline int tag_is_own(uint64_t tag, uint64_t position) {
    return tag_position(tag) == position && tag_state(tag) != ENGINE_FRAME_STALE;
}
static inline uint64_t next_lap(uint64_t position, uint64_t capacity) {
    return (position | (capacity - 1)) + 1;
}
static inline int64_t get_base_offset(const struct engine_frame_header *f) {
    return (int64_t)get_be64((const uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH);
}

static inline uint64_t pack_tail(uint64_t position, int64_t offset) {
    return ((uint64_t)(uint32_t)offset << 32) | (uint32_t)(position >> 3);
}

/* A consistent view of the tail: the drain cursor read before and after the
 * tail word is the same, so it is a valid base for both unpackings. */
typedef struct tail_view {
    uint64_t raw;
    uint64_t position;
    int64_t offset;
    uint64_t drain_position;
} tail_view_t;

static void read_tail(struct engine_ring_header *h, tail_view_t *v) {
    for (;;) {
        uint64_t dp = engine_load_acquire_u64(&h->drain_position);
        int64_t doff = engine_load_acquire_i64(&h->drain_offset);
        uint64_t t = engine_load_acquire_u64(&h->tail);
        if (dp != engine_load_acquire_u64(&h->drain_position) ||
            doff != engine_load_acquire_i64(&h->drain_offset))
            continue;
        v->raw = t;
        v->drain_position = dp;
        v->position = dp + ((uint64_t)(uint32_t)((uint32_t)t - (uint32_t)(dp >> 3)) << 3);
        v->offset = doff + (int64_t)(uint32_t)((uint32_t)(t >> 32) - (uint32_t)doff);
        return;
    }
}

/* ---- setup ------------------------------------------------------------- */

uint64_t engine_ring_region_length(uint64_t capacity) {
    return ENGINE_RING_HEADER_LENGTH + capacity;
}

int engine_ring_init(void *region, uint64_t region_length, uint64_t capacity,
                     uint64_t max_frame_length, int64_t base_offset,
                     int64_t stall_timeout_ns, int32_t leader_epoch, uint32_t sealed) {
    if (capacity < ENGINE_RING_MIN_CAPACITY || capacity > ENGINE_RING_MAX_CAPACITY ||
        (capacity & (capacity - 1)))
        return ENGINE_RING_BAD_ARGUMENT;
    if (region_length < engine_ring_region_length(capacity)) return ENGINE_RING_BAD_ARGUMENT;
    if (max_frame_length > capacity / 2 ||
        max_frame_length < ENGINE_FRAME_HEADER_LENGTH + ENGINE_BATCH_HEADER_LENGTH + 16)
        return ENGINE_RING_BAD_ARGUMENT;
    if (base_offset < 0 || stall_timeout_ns <= 0) return ENGINE_RING_BAD_ARGUMENT;
    struct engine_ring_header *h = header_of(region);
    memset(h, 0, sizeof *h);
    h->header_length = ENGINE_RING_HEADER_LENGTH;
    h->magic = ENGINE_RING_MAGIC;
    h->capacity = capacity;
    h->max_frame_length = max_frame_length;
    h->base_offset = base_offset;
    h->stall_timeout_ns = stall_timeout_ns;
    h->creator_pid = self_pid();
    h->tail = pack_tail(0, base_offset);
    h->drain_position = 0;
    h->drain_offset = base_offset;
    h->leader_epoch = leader_epoch;
    h->sealed = sealed;
    h->high_watermark = -1;
    h->isr_count = 1;
    h->stall_position = UINT64_MAX;
    engine_store_release_u32(&h->version, ENGINE_RING_VERSION);
    return ENGINE_RING_OK;
}

int engine_ring_check(const void *region, uint64_t region_length) {
    const struct engine_ring_header *h = region;
    if (region_length < ENGINE_RING_HEADER_LENGTH) return ENGINE_RING_CORRUPT;
    if (engine_load_acquire_u32(&h->version) != ENGINE_RING_VERSION) return ENGINE_RING_CORRUPT;
    if (h->magic != ENGINE_RING_MAGIC || h->header_length != ENGINE_RING_HEADER_LENGTH)
        return ENGINE_RING_CORRUPT;
    if (h->capacity & (h->capacity - 1) || region_length < engine_ring_region_length(h->capacity))
        return ENGINE_RING_CORRUPT;
    return ENGINE_RING_OK;
}

/* ---- append ------------------------------------------------------------ */

/* Waits for the broker to drain; returns 0 when the deadline passed. */
static int wait_for_space(struct engine_ring_header *h, uint64_t drain_position,
                          int64_t deadline_ns) {
    for (int i = 0; i < SPIN_LIMIT; i++) {
        if (engine_load_acquire_u64(&h->drain_position) != drain_position) return 1;
        engine_cpu_relax();
    }
    engine_fetch_add_u32(&h->space_waiters, 1);
    engine_fence();
    uint32_t seq = engine_load_acquire_u32(&h->space_seq);
    int moved = engine_load_acquire_u64(&h->drain_position) != drain_position;
    if (!moved) {
        int64_t left = deadline_ns - now_ns();
        if (left > 0) futex_wait(&h->space_seq, seq, left);
    }
    engine_fetch_sub_u32(&h->space_waiters, 1);
    return moved || now_ns() < deadline_ns;
}

/* Claims frame_length bytes and count offsets; stamps the frame. */
static int claim(void *region, uint32_t frame_length, uint32_t count, int64_t timeout_ns,
                 int64_t *deadline_ns, int replica, struct engine_frame_header **out_frame,
                 uint64_t *out_position, int64_t *out_offset) {
    struct engine_ring_header *h = header_of(region);
    uint64_t capacity = h->capacity;
    uint64_t stride = align8(frame_length);
    if (frame_length > h->max_frame_length) return ENGINE_RING_TOO_LARGE;
    tail_view_t v;
    uint64_t padding;
    int counted_full = 0;
    for (;;) {
        if (!replica && engine_load_relaxed_u32(&h->sealed)) return ENGINE_RING_SEALED;
        read_tail(h, &v);
        uint64_t index = v.position & (capacity - 1);
        padding = index + stride > capacity ? capacity - index : 0;
        if (v.position + padding + stride > v.drain_position + capacity) {
            if (!counted_full) {
                engine_fetch_add_u64(&h->full_waits, 1);
                wake(&h->full_seq, &h->full_waiters); /* a drain between passes: now */
                counted_full = 1;
            }
            if (*deadline_ns == 0) *deadline_ns = now_ns() + timeout_ns;
            if (!wait_for_space(h, v.drain_position, *deadline_ns)) return ENGINE_RING_FULL;
            continue;
        }
        uint64_t next = pack_tail(v.position + padding + stride, v.offset + count);
        if (engine_cas_u64(&h->tail, v.raw, next)) break;
    }
    if (padding) {
        /* Stamp the wrap padding; if a reaper already did, it is padding anyway. */
        struct engine_frame_header *pad = frame_at(region, capacity, v.position);
        uint64_t old = engine_load_acquire_u64(&pad->tag);
        if (!tag_is_own(old, v.position))
            engine_cas_u64(&pad->tag, old, v.position | ENGINE_FRAME_PAD_TO_END);
    }
    uint64_t position = v.position + padding;
    struct engine_frame_header *f = frame_at(region, capacity, position);
    uint64_t old = engine_load_acquire_u64(&f->tag);
    if (tag_is_own(old, position)) return ENGINE_RING_REAPED;
    f->frame_length = frame_length;
    f->offset_count = count;
    f->pid = self_pid();
    f->reserved = 0;
    if (!engine_cas_u64(&f->tag, old, position | ENGINE_FRAME_CLAIMED)) return ENGINE_RING_REAPED;
    *out_frame = f;
    *out_position = position;
    *out_offset = v.offset;
    return ENGINE_RING_OK;
}

static int publish(void *region, struct engine_frame_header *f, uint64_t position) {
    struct engine_ring_header *h = header_of(region);
    if (!engine_cas_u64(&f->tag, position | ENGINE_FRAME_CLAIMED,
                        position | ENGINE_FRAME_PUBLISHED))
        return ENGINE_RING_REAPED;
    wake(&h->publish_seq, &h->publish_waiters);
    return ENGINE_RING_OK;
}

static int check_fields(struct engine_ring_header *h, const engine_producer_fields_t *fields,
                        engine_producer_fields_t *out) {
    *out = *fields;
    int32_t epoch = engine_load_acquire_i32(&h->leader_epoch);
    if (fields->leader_epoch >= 0 && fields->leader_epoch != epoch) return ENGINE_RING_FENCED;
    if (fields->min_insync > 0 &&
        engine_load_acquire_u32(&h->isr_count) < (uint32_t)fields->min_insync)
        return ENGINE_RING_NOT_ENOUGH_REPLICAS;
    out->leader_epoch = epoch;
    return ENGINE_RING_OK;
}

/* ---- producer fencing (transactions; see ring.h) ------------------------ */

/* The slot of producer_id: found, or (create 1) taken from the free ones. */
static struct engine_producer_slot *producer_slot(struct engine_ring_header *h,
                                                  int64_t producer_id, int create) {
    uint64_t key = (uint64_t)producer_id + 1;
    uint32_t start = (uint32_t)(key * 0x9E3779B97F4A7C15ull >> 58); /* 6 bits: 64 slots */
    for (uint32_t i = 0; i < ENGINE_RING_PRODUCER_SLOTS;) {
        struct engine_producer_slot *s = &h->producers[(start + i) % ENGINE_RING_PRODUCER_SLOTS];
        uint64_t k = engine_load_acquire_u64(&s->key);
        if (k == key) return s;
        if (k == 0) {
            if (!create) return NULL;
            if (engine_cas_u64(&s->key, 0, key)) return s;
            continue; /* another fencer took this slot: look at it again */
        }
        i++;
    }
    return NULL;
}

int engine_ring_fence(void *region, int64_t producer_id, int32_t epoch) {
    if (producer_id < 0 || epoch < 0) return ENGINE_RING_BAD_ARGUMENT;
    struct engine_producer_slot *s = producer_slot(header_of(region), producer_id, 1);
    if (!s) return ENGINE_RING_TABLE_FULL;
    for (;;) {
        int32_t old = engine_load_acquire_i32(&s->epoch);
        if (old >= epoch || engine_cas_i32(&s->epoch, old, epoch)) return ENGINE_RING_OK;
    }
}

int32_t engine_ring_producer_epoch(void *region, int64_t producer_id) {
    if (producer_id < 0) return -1;
    struct engine_producer_slot *s = producer_slot(header_of(region), producer_id, 0);
    return s ? engine_load_acquire_i32(&s->epoch) : -1;
}

/* After a successful claim: is the batch's producer epoch fenced? Then the
 * claimed frame becomes padding (its offsets are skipped). */
static int fenced_after_claim(void *region, const engine_producer_fields_t *pf,
                              struct engine_frame_header *f, uint64_t position) {
    if (pf->producer_id < 0 || pf->producer_epoch < 0) return 0;
    engine_fence(); /* order our tail CAS before the slot load (see ring.h) */
    struct engine_producer_slot *s = producer_slot(header_of(region), pf->producer_id, 0);
    if (!s || engine_load_acquire_i32(&s->epoch) <= pf->producer_epoch) return 0;
    if (engine_cas_u64(&f->tag, position | ENGINE_FRAME_CLAIMED, position | ENGINE_FRAME_PADDING))
        wake(&header_of(region)->publish_seq, &header_of(region)->publish_waiters);
    return 1;
}

int64_t engine_ring_append(void *region, const engine_producer_fields_t *fields,
                       int64_t timestamp_ms,
                       const char *key, int32_t key_length,
                       const char *value, int32_t value_length,
                       const char *headers, int32_t headers_length, int32_t header_count,
                       int64_t timeout_ns) {
    struct engine_ring_header *h = header_of(region);
    engine_producer_fields_t pf;
    int code = check_fields(h, fields, &pf);
    if (code != ENGINE_RING_OK) return -code;
    if (key_length < -1 || value_length < -1 || headers_length < 0 || header_count < 0)
        return -ENGINE_RING_BAD_ARGUMENT;
    size_t record_length = engine_batch_record_length(0, 0, key_length, value_length,
                                                      headers_length, header_count);
    size_t batch_length = ENGINE_BATCH_HEADER_LENGTH + record_length;
    size_t frame_length = ENGINE_FRAME_HEADER_LENGTH + batch_length;
    if (frame_length > h->max_frame_length) return -ENGINE_RING_TOO_LARGE;
    struct engine_frame_header *f;
    uint64_t position;
    int64_t offset, deadline = 0;
    code = claim(region, (uint32_t)frame_length, 1, timeout_ns, &deadline, 0, &f, &position,
                 &offset);
    if (code != ENGINE_RING_OK) return -code;
    if (fenced_after_claim(region, &pf, f, position)) return -ENGINE_RING_PRODUCER_FENCED;
    uint8_t *batch = (uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH;
    engine_batch_write_record(batch + ENGINE_BATCH_HEADER_LENGTH, 0, 0, (const uint8_t *)key,
                              key_length, (const uint8_t *)value, value_length,
                              (const uint8_t *)headers, headers_length, header_count);
    engine_batch_write_header(batch, batch_length, offset, 1, timestamp_ms, timestamp_ms, &pf);
    code = publish(region, f, position);
    return code == ENGINE_RING_OK ? offset : -code;
}

int64_t engine_ring_append_value(void *region, const engine_producer_fields_t *fields,
                                 int64_t timestamp_ms, const char *key, int32_t key_length,
                                 const char *value, int32_t value_length) {
    return engine_ring_append(region, fields, timestamp_ms, key, key_length, value, value_length,
                              NULL, 0, 0, fields->timeout_ns);
}

int32_t engine_route_pick(engine_route_t *route, int32_t partition, const char *key,
                          int32_t key_length, int32_t value_length) {
    if ((int64_t)(key_length > 0 ? key_length : 0) + (value_length > 0 ? value_length : 0) >
        route->max_record_bytes)
        return -ENGINE_RING_TOO_LARGE;
    int32_t p;
    if (partition >= 0) {
        if (partition >= route->partition_count) return -ENGINE_RING_BAD_ARGUMENT;
        p = partition;
    } else if (key) {
        p = (engine_murmur2(key, key_length) & 0x7FFFFFFF) % route->partition_count;
    } else {
        p = route->sticky_partition;
        route->sticky_bytes += value_length > 0 ? value_length : 0;
        if (route->sticky_bytes >= route->batch_bytes && route->partition_count > 1) {
            /* xorshift64: any other partition, evenly */
            uint64_t x = route->random_state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            route->random_state = x;
            int32_t step = 1 + (int32_t)(x % (uint64_t)(route->partition_count - 1));
            route->sticky_partition = (p + step) % route->partition_count;
            route->sticky_bytes = 0;
        }
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    route->last_partition = p;
    route->last_timestamp_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    return p;
}

int64_t engine_ring_send(engine_route_t *route, int32_t partition, const char *key,
                         int32_t key_length, const char *value, int32_t value_length) {
    int32_t p = engine_route_pick(route, partition, key, key_length, value_length);
    if (p < 0) return p;
    return engine_ring_append(route->regions[p], route->fields, route->last_timestamp_ms, key,
                              key_length, value, value_length, NULL, 0, 0, 0);
}

int64_t engine_ring_append_encoded(void *region, const engine_producer_fields_t *fields,
                                   const uint8_t *records, uint64_t length, int32_t count,
                                   int64_t base_timestamp, int64_t max_timestamp,
                                   int64_t timeout_ns) {
    struct engine_ring_header *h = header_of(region);
    engine_producer_fields_t pf;
    int code = check_fields(h, fields, &pf);
    if (code != ENGINE_RING_OK) return -code;
    if (count < 1 || !length) return -ENGINE_RING_BAD_ARGUMENT;
    size_t batch_length = ENGINE_BATCH_HEADER_LENGTH + length;
    size_t frame_length = ENGINE_FRAME_HEADER_LENGTH + batch_length;
    if (frame_length > h->max_frame_length) return -ENGINE_RING_TOO_LARGE;
    struct engine_frame_header *f;
    uint64_t position;
    int64_t offset, deadline = 0;
    code = claim(region, (uint32_t)frame_length, (uint32_t)count, timeout_ns, &deadline, 0, &f,
                 &position, &offset);
    if (code != ENGINE_RING_OK) return -code;
    if (fenced_after_claim(region, &pf, f, position)) return -ENGINE_RING_PRODUCER_FENCED;
    uint8_t *batch = (uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH;
    memcpy(batch + ENGINE_BATCH_HEADER_LENGTH, records, length);
    engine_batch_write_header(batch, batch_length, offset, count, base_timestamp, max_timestamp,
                              &pf);
    code = publish(region, f, position);
    return code == ENGINE_RING_OK ? offset : -code;
}

int64_t engine_ring_append_client(void *region, const engine_producer_fields_t *fields,
                                  const uint8_t *batch, uint64_t length, int64_t timeout_ns) {
    struct engine_ring_header *h = header_of(region);
    engine_producer_fields_t pf;
    int code = check_fields(h, fields, &pf);
    if (code != ENGINE_RING_OK) return -code;
    if (length < ENGINE_BATCH_HEADER_LENGTH ||
        (uint64_t)get_be32(batch + ENGINE_BATCH_LENGTH_OFFSET) + ENGINE_BATCH_LENGTH_OVERHEAD !=
            length)
        return -ENGINE_RING_BAD_ARGUMENT;
    int32_t last_delta = (int32_t)get_be32(batch + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET);
    if (last_delta < 0) return -ENGINE_RING_BAD_ARGUMENT;
    size_t frame_length = ENGINE_FRAME_HEADER_LENGTH + length;
    if (frame_length > h->max_frame_length) return -ENGINE_RING_TOO_LARGE;
    /* The fencing table judges the batch's own producer. */
    pf.producer_id = (int64_t)get_be64(batch + ENGINE_BATCH_PRODUCER_ID_OFFSET);
    pf.producer_epoch = (int16_t)get_be16(batch + ENGINE_BATCH_PRODUCER_EPOCH_OFFSET);
    struct engine_frame_header *f;
    uint64_t position;
    int64_t offset, deadline = 0;
    code = claim(region, (uint32_t)frame_length, (uint32_t)last_delta + 1, timeout_ns, &deadline,
                 0, &f, &position, &offset);
    if (code != ENGINE_RING_OK) return -code;
    if (fenced_after_claim(region, &pf, f, position)) return -ENGINE_RING_PRODUCER_FENCED;
    uint8_t *out = (uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH;
    memcpy(out, batch, length);
    /* Neither field is covered by the CRC (it starts at the attributes). */
    put_be64(out + ENGINE_BATCH_BASE_OFFSET_OFFSET, (uint64_t)offset);
    put_be32(out + ENGINE_BATCH_LEADER_EPOCH_OFFSET, (uint32_t)pf.leader_epoch);
    code = publish(region, f, position);
    return code == ENGINE_RING_OK ? offset : -code;
}

/* Records appended in partition order (engine_route_append_keyed) are gathered
 * from all over the caller's arrays, which the hardware prefetcher cannot follow:
 * the values this many records ahead are prefetched. */
#define GATHER_AHEAD 8

/* The body of engine_ring_append_batch. order (may be NULL) picks the records:
 * the r-th record appended is record order[r] of keys/values (fixed strides
 * only), and its offset goes to out_offsets[order[r]]. headers (may be NULL;
 * not with order): each record's Kafka-encoded headers back to back,
 * header_lengths[r] bytes holding header_counts[r] headers. */
static int append_records(void *region, const engine_producer_fields_t *fields,
                          int64_t timestamp_ms, const int64_t *timestamps_ms, int32_t count,
                          const int32_t *order,
                          const char *keys, const int32_t *key_lengths, int32_t key_stride,
                          const char *values, const int32_t *value_lengths, int32_t value_stride,
                          const char *headers, const int32_t *header_lengths,
                          const int32_t *header_counts,
                          int64_t timeout_ns, int64_t *out_offsets, int32_t *out_appended) {
    struct engine_ring_header *h = header_of(region);
    engine_producer_fields_t pf;
    *out_appended = 0;
    int code = check_fields(h, fields, &pf);
    if (code != ENGINE_RING_OK) return code;
    if (count < 0 || (!value_lengths && value_stride < 0) || (keys && !key_lengths && key_stride < 0))
        return ENGINE_RING_BAD_ARGUMENT;
    if (order && (value_lengths || key_lengths || timestamps_ms || headers))
        return ENGINE_RING_BAD_ARGUMENT;
    if (headers && (!header_lengths || !header_counts)) return ENGINE_RING_BAD_ARGUMENT;
    uint64_t max_frame = h->max_frame_length;
    int64_t deadline = 0;
    const uint8_t *kp = (const uint8_t *)keys, *vp = (const uint8_t *)values;
    const uint8_t *hp = (const uint8_t *)headers;
    int32_t i = 0;
    while (i < count) {
        /* Size the next frame: as many records as fit. */
        int64_t base_ts = timestamps_ms ? timestamps_ms[i] : timestamp_ms, max_ts = base_ts;
        size_t batch_length = ENGINE_BATCH_HEADER_LENGTH;
        int32_t j = i;
        while (j < count) {
            int32_t klen = keys ? (key_lengths ? key_lengths[j] : key_stride) : -1;
            int32_t vlen = value_lengths ? value_lengths[j] : value_stride;
            int32_t hlen = headers ? header_lengths[j] : 0, hcount = headers ? header_counts[j] : 0;
            if (klen < -1 || vlen < -1 || hlen < 0 || hcount < 0) return ENGINE_RING_BAD_ARGUMENT;
            int64_t ts = timestamps_ms ? timestamps_ms[j] : timestamp_ms;
            size_t rl = engine_batch_record_length(ts - base_ts, j - i, klen, vlen, hlen, hcount);
            if (ENGINE_FRAME_HEADER_LENGTH + batch_length + rl > max_frame) break;
            batch_length += rl;
            if (ts > max_ts) max_ts = ts;
            j++;
        }
        if (j == i) return ENGINE_RING_TOO_LARGE;
        struct engine_frame_header *f;
        uint64_t position;
        int64_t offset;
        code = claim(region, (uint32_t)(ENGINE_FRAME_HEADER_LENGTH + batch_length),
                     (uint32_t)(j - i), timeout_ns, &deadline, 0, &f, &position, &offset);
        if (code == ENGINE_RING_REAPED) continue; /* torn by a reaper while we stalled: again */
        if (code != ENGINE_RING_OK) return code;
        if (fenced_after_claim(region, &pf, f, position)) return ENGINE_RING_PRODUCER_FENCED;
        uint8_t *batch = (uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH;
        uint8_t *out = batch + ENGINE_BATCH_HEADER_LENGTH;
        const uint8_t *kq = kp, *vq = vp, *hq = hp;
        for (int32_t r = i; r < j; r++) {
            int32_t klen = keys ? (key_lengths ? key_lengths[r] : key_stride) : -1;
            int32_t vlen = value_lengths ? value_lengths[r] : value_stride;
            int32_t hlen = headers ? header_lengths[r] : 0, hcount = headers ? header_counts[r] : 0;
            int64_t ts = timestamps_ms ? timestamps_ms[r] : timestamp_ms;
            int32_t at = order ? order[r] : r;
            if (order) {
                kq = kp ? kp + (size_t)at * (size_t)key_stride : NULL;
                vq = vp + (size_t)at * (size_t)value_stride;
                if (r + GATHER_AHEAD < j) { /* gathered out of order: fetch ahead */
                    const uint8_t *next = vp + (size_t)order[r + GATHER_AHEAD] * value_stride;
                    __builtin_prefetch(next);
                    __builtin_prefetch(next + value_stride - 1);
                    if (kp) __builtin_prefetch(kp + (size_t)order[r + GATHER_AHEAD] * key_stride);
                }
            }
            out += engine_batch_write_record(out, ts - base_ts, r - i, kq, klen, vq, vlen,
                                             hq, hlen, hcount);
            if (!order) {
                if (kq && klen > 0) kq += klen;
                if (vlen > 0) vq += vlen;
                if (hq) hq += hlen;
            }
            if (out_offsets) out_offsets[at] = offset + (r - i);
        }
        engine_batch_write_header(batch, batch_length, offset, j - i, base_ts, max_ts, &pf);
        code = publish(region, f, position);
        if (code == ENGINE_RING_REAPED) continue;
        if (pf.base_sequence >= 0) /* the next frame's first sequence (wraps as Kafka's) */
            pf.base_sequence = (int32_t)(((uint32_t)pf.base_sequence + (uint32_t)(j - i)) &
                                         0x7FFFFFFFu);
        if (!order) {
            kp = kq;
            vp = vq;
            hp = hq;
        }
        i = j;
        *out_appended = i;
    }
    return ENGINE_RING_OK;
}

int engine_ring_append_batch(void *region, const engine_producer_fields_t *fields,
                             int64_t timestamp_ms, const int64_t *timestamps_ms,
                             int32_t count,
                             const char *keys, const int32_t *key_lengths, int32_t key_stride,
                             const char *values, const int32_t *value_lengths,
                             int32_t value_stride,
                             const char *headers, const int32_t *header_lengths,
                             const int32_t *header_counts,
                             int64_t timeout_ns, int64_t *out_offsets,
                             int32_t *out_appended) {
    return append_records(region, fields, timestamp_ms, timestamps_ms, count, NULL, keys,
                          key_lengths, key_stride, values, value_lengths, value_stride,
                          headers, header_lengths, header_counts,
                          timeout_ns, out_offsets, out_appended);
}

int engine_route_append_keyed(engine_route_t *route, int64_t timestamp_ms, int32_t count,
                              const char *keys, int32_t key_stride,
                              const char *values, int32_t value_stride,
                              int64_t timeout_ns, int32_t *scratch, int64_t *out_offsets,
                              int32_t *out_appended, int32_t *out_codes,
                              int64_t *out_last_offsets) {
    int32_t n = route->partition_count;
    if (count < 0 || n < 1 || !keys || key_stride < 0 || value_stride < 0)
        return ENGINE_RING_BAD_ARGUMENT;
    if ((int64_t)key_stride + value_stride > route->max_record_bytes)
        return ENGINE_RING_TOO_LARGE;
    /* scratch: count partitions, then count record numbers grouped by partition
     * (a stable counting sort), then where each partition's records end. */
    int32_t *parts = scratch, *order = scratch + count, *ends = scratch + 2 * (size_t)count;
    engine_partition_many(keys, NULL, key_stride, count, n, parts);
    engine_order_by_partition(parts, count, n, order, ends);
    int32_t at;
    int result = ENGINE_RING_OK;
    int64_t deadline = now_ns() + timeout_ns; /* one wait for space for the whole call */
    at = 0;
    for (int32_t p = 0; p < n; p++) {
        int32_t c = ends[p] - at;
        out_appended[p] = 0;
        out_codes[p] = ENGINE_RING_OK;
        out_last_offsets[p] = -1;
        if (c) {
            int64_t left = deadline - now_ns();
            int code = append_records(route->regions[p], route->fields, timestamp_ms, NULL, c,
                                      order + at, keys, NULL, key_stride, values, NULL,
                                      value_stride, NULL, NULL, NULL, left > 0 ? left : 0,
                                      out_offsets, &out_appended[p]);
            out_codes[p] = code;
            if (out_offsets && out_appended[p])
                out_last_offsets[p] = out_offsets[order[at + out_appended[p] - 1]];
            if (code != ENGINE_RING_OK) result = code;
        }
        at += c;
    }
    return result;
}

/* ---- read -------------------------------------------------------------- */

/* Walks from *position over padding to the next published frame and returns it;
 * NULL at the first frame that is not readable yet (or not of this lap). A
 * padding frame whose length cannot be right sets *corrupt. */
static struct engine_frame_header *next_published(void *region, uint64_t capacity,
                                                  uint64_t *position, int *corrupt) {
    for (;;) {
        uint64_t c = *position;
        struct engine_frame_header *f = frame_at(region, capacity, c);
        uint64_t tag = engine_load_acquire_u64(&f->tag);
        if (!tag_is_own(tag, c)) return NULL;
        uint32_t state = tag_state(tag);
        if (state == ENGINE_FRAME_PUBLISHED) return f;
        if (state == ENGINE_FRAME_PAD_TO_END) {
            *position = next_lap(c, capacity);
        } else if (state == ENGINE_FRAME_PADDING) {
            uint32_t length = f->frame_length;
            if (length < 8 || length > capacity - (c & (capacity - 1))) {
                *corrupt = 1;
                return NULL;
            }
            *position = c + align8(length);
        } else {
            return NULL; /* claimed, or being reaped */
        }
    }
}

int engine_ring_peek(void *region, engine_cursor_t *cursor, int64_t max_offset,
                     uint64_t max_bytes, engine_batch_info_t *infos, int32_t max_batches,
                     int32_t *out_count) {
    struct engine_ring_header *h = header_of(region);
    uint64_t capacity = h->capacity, max_frame = h->max_frame_length;
    const uint8_t *data = (const uint8_t *)region + ENGINE_RING_HEADER_LENGTH;
    uint64_t c = cursor->position, bytes = 0;
    int64_t next_offset = cursor->offset;
    int32_t n = 0;
    int corrupt = 0;
    if (max_offset < 0) max_offset = engine_load_acquire_i64(&h->high_watermark);
    struct engine_frame_header *f;
    while (n < max_batches && (f = next_published(region, capacity, &c, &corrupt)) != NULL) {
        uint32_t length = f->frame_length;
        if (length < ENGINE_FRAME_HEADER_LENGTH + ENGINE_BATCH_HEADER_LENGTH ||
            length > max_frame || length > capacity - (c & (capacity - 1))) {
            corrupt = 1;
            break;
        }
        int64_t base = get_base_offset(f);
        if (max_offset >= 0 && base >= max_offset) break;
        uint64_t batch_length = length - ENGINE_FRAME_HEADER_LENGTH;
        if (n && bytes + batch_length > max_bytes) break;
        const uint8_t *batch = (const uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH;
        if (engine_batch_info(batch, batch_length, 1, (uint64_t)(batch - data), &infos[n]) !=
                ENGINE_BATCH_OK ||
            (uint64_t)infos[n].length != batch_length) {
            corrupt = 1;
            break;
        }
        n++;
        bytes += batch_length;
        next_offset = base + f->offset_count;
        c += align8(length);
    }
    *out_count = n;
    if (!n) return corrupt ? ENGINE_RING_CORRUPT : ENGINE_RING_EMPTY;
    cursor->position = c;
    cursor->offset = next_offset;
    return ENGINE_RING_OK;
}

int engine_ring_read_replica(void *region, engine_cursor_t *cursor, char *out,
                             uint64_t out_capacity, uint64_t *out_length, int64_t max_offset) {
    struct engine_ring_header *h = header_of(region);
    uint64_t capacity = h->capacity, max_frame = h->max_frame_length;
    uint64_t first = cursor->position, c = first;
    int64_t next_offset = cursor->offset;
    uint64_t copied = 0;
    int code = ENGINE_RING_OK, corrupt = 0;
    if (max_offset < 0) max_offset = engine_load_acquire_i64(&h->high_watermark);
    struct engine_frame_header *f;
    while ((f = next_published(region, capacity, &c, &corrupt)) != NULL) {
        uint32_t length = f->frame_length;
        if (length < ENGINE_FRAME_HEADER_LENGTH + ENGINE_BATCH_HEADER_LENGTH ||
            length > max_frame || length > capacity - (c & (capacity - 1))) {
            corrupt = 1; /* unless overwritten: checked below */
            break;
        }
        int64_t base = get_base_offset(f);
        if (max_offset >= 0 && base >= max_offset) break;
        uint64_t batch_length = length - ENGINE_FRAME_HEADER_LENGTH;
        if (copied + batch_length > out_capacity) {
            if (!copied) {
                code = ENGINE_RING_OUT_TOO_SMALL;
                *out_length = batch_length;
            }
            break;
        }
        memcpy(out + copied, (uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH, batch_length);
        copied += batch_length;
        next_offset = base + f->offset_count;
        c += align8(length);
    }
    if (corrupt && code == ENGINE_RING_OK) code = ENGINE_RING_CORRUPT;
    /* Validate: nothing claimed over the first frame while we copied. */
    engine_acquire_fence();
    tail_view_t v;
    read_tail(h, &v);
    if (v.position > first + capacity) return ENGINE_RING_OVERWRITTEN;
    if (code != ENGINE_RING_OK && !copied) return code;
    *out_length = copied;
    cursor->position = c;
    if (copied) cursor->offset = next_offset;
    return copied ? ENGINE_RING_OK : ENGINE_RING_EMPTY;
}

/* Adds one read to the ring's "out" counters (metrics; see ring.h). */
static void count_read(struct engine_ring_header *h, int64_t offsets, uint64_t bytes) {
    engine_fetch_add_u64(&h->read_offsets, (uint64_t)offsets); /* relaxed: counts only */
    engine_fetch_add_u64(&h->read_bytes, bytes);
}

void engine_ring_count_read(void *region, int64_t offsets, uint64_t bytes) {
    if (offsets > 0) count_read(header_of(region), offsets, bytes);
}

int engine_ring_read(void *region, engine_cursor_t *cursor, char *out,
                     uint64_t out_capacity, uint64_t *out_length, int64_t max_offset) {
    uint64_t first = cursor->position;
    int64_t first_offset = cursor->offset;
    int code = engine_ring_read_replica(region, cursor, out, out_capacity, out_length,
                                        max_offset);
    if (code == ENGINE_RING_OK)
        count_read(header_of(region), cursor->offset - first_offset, cursor->position - first);
    return code;
}

int engine_ring_read_values(void *region, engine_cursor_t *cursor, int64_t max_offset,
                            int32_t value_size, char *out, int32_t max_records,
                            int32_t *copied, int64_t *next_offset, int64_t *bad_offset,
                            int verify_crc) {
    struct engine_ring_header *h = header_of(region);
    uint64_t capacity = h->capacity, max_frame = h->max_frame_length;
    uint64_t first = cursor->position, c = first;
    int64_t offset = *next_offset, cursor_offset = cursor->offset;
    int64_t expected = offset; /* a batch's offsets never go below it (see ring.h) */
    int32_t n = 0, frames = 0;
    int code = ENGINE_RING_OK, corrupt = 0, moved = 0;
    *copied = 0;
    if (value_size < 1 || max_records < 1) return ENGINE_RING_BAD_ARGUMENT;
    if (max_offset < 0) max_offset = engine_load_acquire_i64(&h->high_watermark);
    struct engine_frame_header *f;
    while (n < max_records && (f = next_published(region, capacity, &c, &corrupt)) != NULL) {
        uint32_t length = f->frame_length;
        if (length < ENGINE_FRAME_HEADER_LENGTH + ENGINE_BATCH_HEADER_LENGTH ||
            length > max_frame || length > capacity - (c & (capacity - 1))) {
            corrupt = 1; /* unless overwritten: checked below */
            break;
        }
        const uint8_t *batch = (const uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH;
        int64_t base = get_base_offset(f);
        if (max_offset >= 0 && base >= max_offset) break;
        int64_t last = (int64_t)((uint64_t)base +
                                 get_be32(batch + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET));
        if (last < expected || (frames && base < expected)) {
            corrupt = 1; /* offsets going back: a damaged base offset */
            break;
        }
        int32_t got = 0, complete = 0;
        int64_t after = offset;
        int bc = engine_batch_values(batch, length - ENGINE_FRAME_HEADER_LENGTH, offset,
                                     value_size, (uint8_t *)out + (size_t)n * (size_t)value_size,
                                     max_records - n, &got, &after, &complete, bad_offset,
                                     verify_crc);
        if (bc == ENGINE_BATCH_VALUE_SIZE) {
            /* Deliver the records before it; the next read starts at it and says so. */
            n += got;
            if (after != offset) moved = 1;
            offset = after;
            if (!moved) code = ENGINE_RING_VALUE_SIZE;
            break;
        }
        if (bc != ENGINE_BATCH_OK) {
            corrupt = 1;
            break;
        }
        n += got;
        if (after != offset) moved = 1;
        offset = after;
        if (!complete) break;
        cursor_offset = base + f->offset_count;
        expected = (int64_t)((uint64_t)last + 1);
        frames++;
        c += align8(length);
        moved = 1;
    }
    /* Validate: nothing claimed over the first frame while we decoded. */
    engine_acquire_fence();
    tail_view_t v;
    read_tail(h, &v);
    if (v.position > first + capacity) return ENGINE_RING_OVERWRITTEN;
    if (code == ENGINE_RING_VALUE_SIZE) return code;
    if (corrupt && !moved) return ENGINE_RING_CORRUPT;
    if (!moved) return ENGINE_RING_EMPTY;
    count_read(h, offset - *next_offset, c - first);
    cursor->position = c;
    cursor->offset = cursor_offset;
    *copied = n;
    *next_offset = offset;
    return ENGINE_RING_OK;
}

int32_t engine_ring_read_values_many(void **regions, engine_cursor_t **cursors,
                                     int64_t *next_offsets, int32_t *codes, int32_t *copied,
                                     int32_t *touched, int32_t count, int32_t first,
                                     int32_t value_size, char *out, int32_t max_records,
                                     int verify_crc) {
    int32_t n = 0, t = 0;
    for (int32_t k = 0; k < count && n < max_records; k++) {
        int32_t i = (first + k) % count;
        int64_t bad_offset;
        codes[i] = engine_ring_read_values(regions[i], cursors[i], -1, value_size,
                                           out + (size_t)n * (size_t)value_size, max_records - n,
                                           &copied[i], &next_offsets[i], &bad_offset, verify_crc);
        if (codes[i] == ENGINE_RING_EMPTY && engine_ring_sealed(regions[i]))
            codes[i] = ENGINE_RING_SEALED;
        if (codes[i] != ENGINE_RING_EMPTY) touched[t++] = i;
        n += copied[i];
    }
    return t;
}

/* ---- wait and reap ----------------------------------------------------- */

/* 1 when a reader at c need not wait: the frame is readable (below the high
 * watermark, for readers that respect it) or skippable, or the cursor was
 * lapped (the read will say OVERWRITTEN). */
static int readable(void *region, struct engine_ring_header *h, uint64_t c, int respect_hw) {
    struct engine_frame_header *f = frame_at(region, h->capacity, c);
    uint64_t tag = engine_load_acquire_u64(&f->tag);
    if (tag_is_own(tag, c)) {
        uint32_t s = tag_state(tag);
        if (s == ENGINE_FRAME_PADDING || s == ENGINE_FRAME_PAD_TO_END) return 1;
        if (s == ENGINE_FRAME_PUBLISHED) {
            int64_t hw = respect_hw ? engine_load_acquire_i64(&h->high_watermark) : -1;
            if (hw < 0 || get_base_offset(f) < hw) return 1;
        }
    }
    tail_view_t v;
    read_tail(h, &v);
    return v.position > c + h->capacity;
}

/* Finds where an unstamped claim at c ends: the next stamped frame, or the tail. */
static uint64_t unstamped_extent(void *region, uint64_t capacity, uint64_t c, uint64_t tail) {
    for (uint64_t p = c + 8; p < tail; p += 8) {
        struct engine_frame_header *f = frame_at(region, capacity, p);
        if (tag_is_own(engine_load_acquire_u64(&f->tag), p)) return p;
    }
    return tail;
}

/* Stamps [c, end) as padding, splitting at the wrap; old is c's stale tag. */
static int stamp_padding(void *region, uint64_t capacity, uint64_t c, uint64_t end,
                         uint64_t old) {
    struct engine_frame_header *f = frame_at(region, capacity, c);
    uint64_t lap_end = next_lap(c, capacity);
    if (end >= lap_end && end != c) {
        if (!engine_cas_u64(&f->tag, old, c | ENGINE_FRAME_PAD_TO_END)) return 0;
        if (end > lap_end) {
            struct engine_frame_header *g = frame_at(region, capacity, lap_end);
            uint64_t gold = engine_load_acquire_u64(&g->tag);
            if (tag_is_own(gold, lap_end)) return 1;
            if (!engine_cas_u64(&g->tag, gold, lap_end | ENGINE_FRAME_REAPING)) return 1;
            g->frame_length = (uint32_t)(end - lap_end);
            g->offset_count = 0;
            engine_store_release_u64(&g->tag, lap_end | ENGINE_FRAME_PADDING);
        }
        return 1;
    }
    if (!engine_cas_u64(&f->tag, old, c | ENGINE_FRAME_REAPING)) return 0;
    f->frame_length = (uint32_t)(end - c);
    f->offset_count = 0;
    engine_store_release_u64(&f->tag, c | ENGINE_FRAME_PADDING);
    return 1;
}

/* Reaps a torn claim at c if there is one; returns 1 when it did. */
static int try_reap(void *region, struct engine_ring_header *h, uint64_t c) {
    uint64_t capacity = h->capacity;
    tail_view_t v;
    read_tail(h, &v);
    if (c >= v.position) return 0; /* nothing claimed at c: an ordinary wait */
    struct engine_frame_header *f = frame_at(region, capacity, c);
    uint64_t tag = engine_load_acquire_u64(&f->tag);
    int reaped = 0;
    if (tag_is_own(tag, c)) {
        if (tag_state(tag) == ENGINE_FRAME_CLAIMED && pid_is_dead(f->pid))
            reaped = engine_cas_u64(&f->tag, tag, c | ENGINE_FRAME_PADDING);
    } else {
        /* Unstamped: its claimant died (or stalls) between claim and stamp. */
        int64_t now = now_ns();
        if (engine_load_acquire_u64(&h->stall_position) != c) {
            __atomic_store_n(&h->stall_since_ns, now, __ATOMIC_RELAXED);
            engine_store_release_u64(&h->stall_position, c);
            return 0;
        }
        if (now - __atomic_load_n(&h->stall_since_ns, __ATOMIC_RELAXED) < h->stall_timeout_ns)
            return 0;
        uint64_t end = unstamped_extent(region, capacity, c, v.position);
        if (end == v.position) {
            /* The extent ends at the tail: make sure no live claimant in its
             * stamp window sits between c and the tail. */
            struct timespec ts = {0, RESCAN_NS};
            nanosleep(&ts, NULL);
            read_tail(h, &v);
            uint64_t again = unstamped_extent(region, capacity, c, v.position);
            if (again == v.position && again != end) return 0; /* tail moved: undecided */
            end = again;
        }
        reaped = stamp_padding(region, capacity, c, end, tag);
    }
    if (reaped) {
        engine_fetch_add_u64(&h->reaped_frames, 1);
        wake(&h->publish_seq, &h->publish_waiters);
    }
    return reaped;
}

/* The spin phase of a wait: calls ready(arg) between PAUSEs for spin_ns (at
 * least SPIN_LIMIT times), yielding the CPU after the first YIELD_AFTER_NS.
 * spin_ns 0: no spin at all (replication threads, which sleep instead; a PAUSE
 * loop in a VM can cost a VM exit). */
#define YIELD_AFTER_NS 5000LL
static int spin_until_ready(int (*ready)(void *), void *arg, int64_t spin_ns) {
    if (spin_ns <= 0) return 0;
    for (int i = 0; i < SPIN_LIMIT; i++) {
        engine_cpu_relax();
        if (ready(arg)) return 1;
    }
    int64_t start = now_ns(), now = start;
    while (now - start < spin_ns) {
        for (int i = 0; i < 64; i++) {
            engine_cpu_relax();
            if (ready(arg)) return 1;
        }
        now = now_ns();
        if (now - start > YIELD_AFTER_NS) sched_yield();
    }
    return 0;
}

struct wait_one { void *region; uint64_t position; int respect_hw; };
static int ready_one(void *arg) {
    struct wait_one *w = arg;
    return readable(w->region, header_of(w->region), w->position, w->respect_hw);
}

/* The futex word a reader sleeps on: one that respects the high watermark of a
 * replicated ring (high_watermark >= 0) waits for it to rise (hw_seq); everyone
 * else for a publish (publish_seq). */
static inline uint32_t *wait_word(struct engine_ring_header *h, int respect_hw,
                                  uint32_t **waiters) {
    if (respect_hw && engine_load_acquire_i64(&h->high_watermark) >= 0) {
        *waiters = &h->hw_waiters;
        return &h->hw_seq;
    }
    *waiters = &h->publish_waiters;
    return &h->publish_seq;
}

int engine_ring_wait(void *region, const engine_cursor_t *cursor, int64_t timeout_ns,
                     int respect_hw, int64_t spin_ns) {
    struct engine_ring_header *h = header_of(region);
    uint64_t c = cursor->position;
    if (readable(region, h, c, respect_hw)) return ENGINE_RING_OK;
    if (timeout_ns <= 0) return ENGINE_RING_TIMEOUT;
    struct wait_one one = {region, c, respect_hw};
    if (spin_until_ready(ready_one, &one, spin_ns < timeout_ns ? spin_ns : timeout_ns))
        return ENGINE_RING_OK;
    int64_t deadline = now_ns() + timeout_ns;
    for (;;) {
        uint32_t *waiters, *word = wait_word(h, respect_hw, &waiters);
        engine_fetch_add_u32(waiters, 1);
        engine_fence();
        uint32_t seq = engine_load_acquire_u32(word);
        if (readable(region, h, c, respect_hw)) {
            engine_fetch_sub_u32(waiters, 1);
            return ENGINE_RING_OK;
        }
        int64_t left = deadline - now_ns();
        tail_view_t v;
        read_tail(h, &v);
        int stalled = c < v.position; /* claimed but not published (or above the hw) */
        if (left > 0) futex_wait(word, seq, stalled && left > REAP_CHECK_NS ? REAP_CHECK_NS : left);
        engine_fetch_sub_u32(waiters, 1);
        if (readable(region, h, c, respect_hw)) return ENGINE_RING_OK;
        if (stalled && try_reap(region, h, c)) return ENGINE_RING_OK;
        if (now_ns() >= deadline) return ENGINE_RING_TIMEOUT;
        /* Woken without data for us (engine_ring_wake, or a frame above the high
         * watermark): let the caller look at its own state. */
        if (!stalled && engine_load_acquire_u32(word) != seq) return ENGINE_RING_TIMEOUT;
    }
}

void engine_ring_wake(void *region) {
    struct engine_ring_header *h = header_of(region);
    engine_fetch_add_u32(&h->publish_seq, 1);
    futex_wake_all(&h->publish_seq);
    engine_fetch_add_u32(&h->hw_seq, 1);
    futex_wake_all(&h->hw_seq);
    engine_fetch_add_u32(&h->space_seq, 1);
    futex_wake_all(&h->space_seq);
    engine_fetch_add_u32(&h->full_seq, 1);
    futex_wake_all(&h->full_seq);
}

int engine_ring_wait_full(void *region, uint64_t full_waits_seen, int64_t timeout_ns) {
    struct engine_ring_header *h = header_of(region);
    int64_t deadline = now_ns() + timeout_ns;
    for (;;) {
        if (engine_load_acquire_u64(&h->full_waits) != full_waits_seen) return ENGINE_RING_OK;
        int64_t left = deadline - now_ns();
        if (left <= 0) return ENGINE_RING_TIMEOUT;
        engine_fetch_add_u32(&h->full_waiters, 1);
        engine_fence();
        uint32_t seq = engine_load_acquire_u32(&h->full_seq);
        if (engine_load_acquire_u64(&h->full_waits) == full_waits_seen)
            futex_wait(&h->full_seq, seq, left);
        engine_fetch_sub_u32(&h->full_waiters, 1);
        /* engine_ring_wake (a stopping replica) bumps full_seq without a full ring */
        if (engine_load_acquire_u32(&h->full_seq) != seq) return ENGINE_RING_OK;
    }
}

int64_t engine_ring_claim_for_test(void *region, uint32_t frame_length, int stamp) {
    struct engine_ring_header *h = header_of(region);
    if (stamp) {
        struct engine_frame_header *f;
        uint64_t position;
        int64_t offset, deadline = 0;
        int code = claim(region, frame_length, 1, 0, &deadline, 0, &f, &position, &offset);
        return code == ENGINE_RING_OK ? (int64_t)position : -code;
    }
    tail_view_t v;
    for (;;) {
        read_tail(h, &v);
        uint64_t next = pack_tail(v.position + align8(frame_length), v.offset + 1);
        if (engine_cas_u64(&h->tail, v.raw, next)) return (int64_t)v.position;
    }
}

/* futex_waitv (Linux 5.16+): sleep on several rings' publish words at once. */
struct engine_futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};
#define ENGINE_SYS_FUTEX_WAITV 449
#define ENGINE_FUTEX2_SIZE_U32 0x02
#define ENGINE_WAIT_ANY_MAX 128

struct wait_many {
    void **regions;
    const engine_cursor_t *cursors;
    int32_t count;
    int respect_hw;
    int ready;
};
static int ready_many(void *arg) {
    struct wait_many *w = arg;
    for (int32_t i = 0; i < w->count; i++)
        if (readable(w->regions[i], header_of(w->regions[i]), w->cursors[i].position,
                     w->respect_hw)) {
            w->ready = i;
            return 1;
        }
    return 0;
}

int32_t engine_ring_ready_many(void **regions, engine_cursor_t **cursors, int32_t count,
                               uint8_t *ready) {
    int32_t n = 0;
    for (int32_t i = 0; i < count; i++) {
        struct engine_ring_header *h = header_of(regions[i]);
        uint64_t c = cursors[i]->position;
        int r = readable(regions[i], h, c, 1) || engine_load_acquire_u32(&h->sealed);
        if (!r) {
            tail_view_t v;
            read_tail(h, &v);
            /* Claimed past the cursor: ready unless the frame there is published (it
             * then waits for the high watermark). */
            if (v.position > c) {
                uint64_t tag = engine_load_acquire_u64(&frame_at(regions[i], h->capacity, c)->tag);
                r = !(tag_is_own(tag, c) && tag_state(tag) == ENGINE_FRAME_PUBLISHED);
            }
        }
        ready[i] = (uint8_t)r;
        n += r;
    }
    return n;
}

int engine_ring_wait_any(void **regions, const engine_cursor_t *cursors, int32_t count,
                         int64_t timeout_ns, int respect_hw, int64_t spin_ns) {
    if (count < 1 || count > ENGINE_WAIT_ANY_MAX) return -ENGINE_RING_BAD_ARGUMENT;
    struct wait_many many = {regions, cursors, count, respect_hw, -1};
    if (ready_many(&many)) return many.ready;
    if (timeout_ns <= 0) return -ENGINE_RING_TIMEOUT;
    if (spin_until_ready(ready_many, &many, spin_ns < timeout_ns ? spin_ns : timeout_ns))
        return many.ready;
    struct engine_futex_waitv waiters[ENGINE_WAIT_ANY_MAX];
    uint32_t *counts[ENGINE_WAIT_ANY_MAX];
    int64_t deadline = now_ns() + timeout_ns;
    for (;;) {
        int stalled = 0, ready = -1;
        for (int32_t i = 0; i < count; i++) {
            struct engine_ring_header *h = header_of(regions[i]);
            uint32_t *word = wait_word(h, respect_hw, &counts[i]);
            engine_fetch_add_u32(counts[i], 1);
            engine_fence();
            waiters[i].val = engine_load_acquire_u32(word);
            waiters[i].uaddr = (uint64_t)(uintptr_t)word;
            waiters[i].flags = ENGINE_FUTEX2_SIZE_U32;
            waiters[i].reserved = 0;
        }
        for (int32_t i = 0; i < count && ready < 0; i++) {
            struct engine_ring_header *h = header_of(regions[i]);
            if (readable(regions[i], h, cursors[i].position, respect_hw)) {
                ready = i;
                break;
            }
            tail_view_t v;
            read_tail(h, &v);
            if (cursors[i].position < v.position) stalled = 1;
        }
        int64_t now = now_ns();
        if (ready < 0 && now < deadline) {
            int64_t until = deadline;
            if (stalled && until - now > REAP_CHECK_NS) until = now + REAP_CHECK_NS;
            struct timespec ts = {.tv_sec = until / 1000000000LL, .tv_nsec = until % 1000000000LL};
            long rc = syscall(ENGINE_SYS_FUTEX_WAITV, waiters, (unsigned)count, 0, &ts,
                              CLOCK_MONOTONIC);
            if (rc == -1 && errno == ENOSYS) {
                /* An older kernel: sleep on the first ring in short slices. */
                int64_t slice = until - now < 1000000 ? until - now : 1000000;
                futex_wait((uint32_t *)(uintptr_t)waiters[0].uaddr, (uint32_t)waiters[0].val, slice);
            }
        }
        for (int32_t i = 0; i < count; i++) engine_fetch_sub_u32(counts[i], 1);
        if (ready >= 0) return ready;
        int woken = 0;
        for (int32_t i = 0; i < count; i++) {
            struct engine_ring_header *h = header_of(regions[i]);
            if (readable(regions[i], h, cursors[i].position, respect_hw)) return i;
            if (stalled && try_reap(regions[i], h, cursors[i].position)) return i;
            if (engine_load_acquire_u32((uint32_t *)(uintptr_t)waiters[i].uaddr) !=
                (uint32_t)waiters[i].val)
                woken = 1;
        }
        if (now_ns() >= deadline || (woken && !stalled)) return -ENGINE_RING_TIMEOUT;
    }
}

int32_t engine_ring_poll_values(void **regions, engine_cursor_t **cursors,
                                int64_t *next_offsets, int32_t *codes, int32_t *copied,
                                int32_t *touched, int32_t count, int32_t first,
                                int32_t value_size, char *out, int32_t max_records,
                                int64_t timeout_ns, int64_t max_spin_ns, int64_t *spin_ns,
                                int verify_crc) {
    if (count < 1 || first < 0 || first >= count) return 0;
    int32_t t = engine_ring_read_values_many(regions, cursors, next_offsets, codes, copied,
                                             touched, count, first, value_size, out, max_records,
                                             verify_crc);
    /* None touched: every ring was visited (nothing was copied) and is EMPTY. */
    if (t != 0 || timeout_ns <= 0 || count > ENGINE_WAIT_ANY_MAX) return t;
    engine_cursor_t at[ENGINE_WAIT_ANY_MAX];
    for (int32_t i = 0; i < count; i++) at[i] = *cursors[i];
    int64_t spin = *spin_ns < 0 ? 0 : (*spin_ns > max_spin_ns ? max_spin_ns : *spin_ns);
    int64_t start = now_ns();
    engine_ring_wait_any(regions, at, count, timeout_ns, 1, spin);
    /* Adaptive spin: the whole window again once data came within it; half of it after
     * a wait that outlasted it (the spin only burned a core someone else could use). */
    *spin_ns = now_ns() - start <= max_spin_ns ? max_spin_ns : spin / 2;
    /* Read again whatever ended the wait: data, a wake (a sealed ring), the timeout. */
    return engine_ring_read_values_many(regions, cursors, next_offsets, codes, copied, touched,
                                        count, first, value_size, out, max_records, verify_crc);
}

/* ---- replication ----------------------------------------------------- */

int engine_ring_append_raw(void *region, const char *batches, uint64_t length,
                           int64_t timeout_ns) {
    struct engine_ring_header *h = header_of(region);
    const uint8_t *p = (const uint8_t *)batches;
    int64_t deadline = 0;
    while (length) {
        if (length < ENGINE_BATCH_HEADER_LENGTH) return ENGINE_RING_CORRUPT;
        uint64_t total = (uint64_t)get_be32(p + ENGINE_BATCH_LENGTH_OFFSET) +
                         ENGINE_BATCH_LENGTH_OVERHEAD;
        if (total > length || total < ENGINE_BATCH_HEADER_LENGTH) return ENGINE_RING_CORRUPT;
        int64_t base = (int64_t)get_be64(p + ENGINE_BATCH_BASE_OFFSET_OFFSET);
        uint32_t count = get_be32(p + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET) + 1;
        tail_view_t v;
        read_tail(h, &v);
        if (base < v.offset) return ENGINE_RING_BAD_ARGUMENT; /* already here */
        struct engine_frame_header *f;
        uint64_t position;
        int64_t offset;
        int code;
        if (base > v.offset) {
            /* The leader skipped offsets (a reaped claim): skip them too. */
            code = claim(region, ENGINE_FRAME_HEADER_LENGTH, (uint32_t)(base - v.offset),
                         timeout_ns, &deadline, 1, &f, &position, &offset);
            if (code != ENGINE_RING_OK) return code;
            engine_store_release_u64(&f->tag, position | ENGINE_FRAME_PADDING);
            wake(&h->publish_seq, &h->publish_waiters);
            continue;
        }
        code = claim(region, (uint32_t)(ENGINE_FRAME_HEADER_LENGTH + total), count, timeout_ns,
                     &deadline, 1, &f, &position, &offset);
        if (code != ENGINE_RING_OK) return code;
        if (offset != base) return ENGINE_RING_CORRUPT; /* only the fetcher appends here */
        memcpy((uint8_t *)f + ENGINE_FRAME_HEADER_LENGTH, p, total);
        if (get_be16(p + ENGINE_BATCH_ATTRIBUTES_OFFSET) & ENGINE_BATCH_ATTR_TRANSACTIONAL) {
            /* Keep the leader's fences: this ring may lead next. */
            int64_t pid = (int64_t)get_be64(p + ENGINE_BATCH_PRODUCER_ID_OFFSET);
            int16_t epoch = (int16_t)get_be16(p + ENGINE_BATCH_PRODUCER_EPOCH_OFFSET);
            engine_ring_fence(region, pid, epoch);
        }
        code = publish(region, f, position);
        if (code != ENGINE_RING_OK) return code;
        p += total;
        length -= total;
    }
    return ENGINE_RING_OK;
}

void engine_ring_advance(void *region, engine_cursor_t *cursor) {
    uint64_t capacity = header_of(region)->capacity, c = cursor->position;
    int64_t next = cursor->offset;
    int corrupt = 0;
    struct engine_frame_header *f;
    while ((f = next_published(region, capacity, &c, &corrupt)) != NULL) {
        next = get_base_offset(f) + f->offset_count;
        c += align8(f->frame_length);
    }
    cursor->position = c;
    cursor->offset = next;
}

int engine_ring_wait_high_watermark(void *region, int64_t offset, int64_t timeout_ns) {
    struct engine_ring_header *h = header_of(region);
    int64_t deadline = 0;
    for (int spin = 0;; spin++) {
        int64_t hw = engine_load_acquire_i64(&h->high_watermark);
        if (hw < 0 || hw > offset) return ENGINE_RING_OK;
        if (engine_load_acquire_u32(&h->sealed)) return ENGINE_RING_SEALED;
        if (spin < SPIN_LIMIT) {
            engine_cpu_relax();
            continue;
        }
        int64_t now = now_ns();
        if (!deadline) deadline = now + timeout_ns;
        if (now >= deadline) return ENGINE_RING_TIMEOUT;
        engine_fetch_add_u32(&h->hw_waiters, 1);
        engine_fence();
        uint32_t seq = engine_load_acquire_u32(&h->hw_seq);
        hw = engine_load_acquire_i64(&h->high_watermark);
        if (hw >= 0 && hw <= offset && !engine_load_acquire_u32(&h->sealed))
            futex_wait(&h->hw_seq, seq, deadline - now < 10000000 ? deadline - now : 10000000);
        engine_fetch_sub_u32(&h->hw_waiters, 1);
    }
}

void engine_ring_set_isr_count(void *region, uint32_t isr_count) {
    engine_store_release_u32(&header_of(region)->isr_count, isr_count);
}

/* ---- seek, drain, control, status -------------------------------------- */

int engine_ring_seek(void *region, int64_t offset, engine_cursor_t *cursor) {
    struct engine_ring_header *h = header_of(region);
    uint64_t capacity = h->capacity;
    for (;;) {
        uint64_t c = engine_load_acquire_u64(&h->drain_position);
        int64_t drain_offset = engine_load_acquire_i64(&h->drain_offset);
        if (c != engine_load_acquire_u64(&h->drain_position)) continue;
        if (offset < drain_offset) return ENGINE_RING_BELOW;
        uint64_t start = c;
        int corrupt = 0;
        struct engine_frame_header *f;
        while ((f = next_published(region, capacity, &c, &corrupt)) != NULL &&
               offset >= get_base_offset(f) + (int64_t)f->offset_count)
            c += align8(f->frame_length);
        engine_acquire_fence();
        tail_view_t v;
        read_tail(h, &v);
        if (v.position > start + capacity) continue; /* lapped while scanning */
        cursor->position = c;
        cursor->offset = offset;
        return ENGINE_RING_OK;
    }
}

int engine_ring_drain_to(void *region, uint64_t position, int64_t offset) {
    struct engine_ring_header *h = header_of(region);
    if (position < h->drain_position || offset < h->drain_offset) return ENGINE_RING_BAD_ARGUMENT;
    engine_store_release_i64(&h->drain_offset, offset);
    engine_store_release_u64(&h->drain_position, position);
    wake(&h->space_seq, &h->space_waiters);
    return ENGINE_RING_OK;
}

void engine_ring_drain_cursor(void *region, engine_cursor_t *cursor) {
    struct engine_ring_header *h = header_of(region);
    for (;;) {
        uint64_t p = engine_load_acquire_u64(&h->drain_position);
        int64_t o = engine_load_acquire_i64(&h->drain_offset);
        if (p == engine_load_acquire_u64(&h->drain_position)) {
            cursor->position = p;
            cursor->offset = o;
            return;
        }
    }
}

void engine_ring_set_leader(void *region, int32_t leader_epoch, uint32_t sealed) {
    struct engine_ring_header *h = header_of(region);
    engine_store_release_i32(&h->leader_epoch, leader_epoch);
    engine_store_release_u32(&h->sealed, sealed);
    wake(&h->space_seq, &h->space_waiters);
    wake(&h->hw_seq, &h->hw_waiters); /* acks="all" producers: SEALED now */
}

uint32_t engine_ring_sealed(void *region) {
    return engine_load_acquire_u32(&header_of(region)->sealed);
}

void engine_ring_set_high_watermark(void *region, int64_t high_watermark) {
    struct engine_ring_header *h = header_of(region);
    engine_store_release_i64(&h->high_watermark, high_watermark);
    wake(&h->hw_seq, &h->hw_waiters);
}

void engine_ring_status(void *region, engine_ring_status_t *out) {
    struct engine_ring_header *h = header_of(region);
    tail_view_t v;
    read_tail(h, &v);
    out->capacity = h->capacity;
    out->tail_position = v.position;
    out->tail_offset = v.offset;
    out->drain_position = engine_load_acquire_u64(&h->drain_position);
    out->drain_offset = engine_load_acquire_i64(&h->drain_offset);
    out->base_offset = h->base_offset;
    out->leader_epoch = engine_load_acquire_i32(&h->leader_epoch);
    out->sealed = engine_load_acquire_u32(&h->sealed);
    out->high_watermark = engine_load_acquire_i64(&h->high_watermark);
    out->isr_count = engine_load_acquire_u32(&h->isr_count);
    out->reserved = 0;
    out->reaped_frames = engine_load_relaxed_u64(&h->reaped_frames);
    out->full_waits = engine_load_relaxed_u64(&h->full_waits);
    out->publish_waiters = engine_load_relaxed_u32(&h->publish_waiters);
    out->space_waiters = engine_load_relaxed_u32(&h->space_waiters);
    out->read_offsets = engine_load_relaxed_u64(&h->read_offsets);
    out->read_bytes = engine_load_relaxed_u64(&h->read_bytes);
}
