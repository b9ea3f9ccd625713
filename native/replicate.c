/* Replication's two hot loops (engine/replica.py runs them and decides the rest).
 *
 * - A follower's fetch: copy the leader's published batches into the follower's
 *   own ring, byte for byte (engine_ring_read_replica, then engine_ring_append_raw).
 * - A leader's high-watermark loop: set the leader's high watermark to the least
 *   log end offset of the leader and its in-sync followers, whose log ends are
 *   their rings' tail offsets.
 *
 * Each is one call that loops without the GIL until there is something for
 * Python to decide (the leader sealed, a lapped cursor, a follower ring that is
 * no longer one of this leadership, a follower outside the ISR catching up) or
 * its timeout passes. Python used to run a pass per append, at tens of
 * microseconds each, in every follower and leader thread.
 *
 * Batching under load: when a pass finds more already waiting and the stream is
 * dense (pause_after), the loop sleeps before the next one (pause_ns, growing while
 * the stream goes on: next_pause),
 * so that what arrives meanwhile is copied (or committed) together and the
 * producers pay no futex wake per append (nobody is waiting on the ring). An
 * idle ring is waited on, so the first record after a quiet spell is copied at
 * once.
 *
 * Stopping: *stop (set by the replica's owner, who then calls engine_ring_wake
 * on the rings waited on) ends either loop within one wait.
 */
#include <string.h>
#include <time.h>

#include "ring.h"

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void pause_for(int64_t ns) {
    if (ns <= 0) return;
    struct timespec ts = {.tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL};
    nanosleep(&ts, NULL);
}

static int stopping(const volatile uint32_t *stop) { return stop && *stop; }

/* Pauses while records keep coming: pause_ns after the first busy pass, doubling with
 * each busy pass after it up to PAUSE_GROWTH times that (each pause is a sleep and a
 * wake-up: at 100 us, a dozen replication threads would switch 120,000 times a
 * second); back to pause_ns once a wait found the ring idle. */
#define PAUSE_GROWTH 16
static int64_t next_pause(int64_t pause, int64_t pause_ns) {
    if (pause <= 0) return pause_ns;
    return pause < pause_ns * PAUSE_GROWTH ? 2 * pause : pause;
}

/* The pause before the next pass, given the records the stream brought since the
 * previous pass began, elapsed_ns ago: next_pause while it is dense enough that
 * pause_ns gathers GATHER_RECORDS of them (here 80,000 records/s), none below that.
 * Pausing on any activity kept the pause at its longest under any steady stream
 * (each pause let the next record in, so the next pass found more): acks="all" at
 * 20,000 records/s waited up to 1.6 ms per hop, a p99 of 3.1 ms end to end. A
 * sparse stream is copied as it comes, a wake per record; a dense one in passes. */
#define GATHER_RECORDS 8
static int64_t pause_after(int64_t pause, int64_t pause_ns, int64_t records,
                           int64_t elapsed_ns) {
    if (records * pause_ns < GATHER_RECORDS * elapsed_ns) return 0;
    return next_pause(pause, pause_ns);
}

/* Gathering, for a follower woken by a dense stream of small appends. With one
 * record per append, a follower that copies each record as it comes costs each
 * record a wake of both followers' loops (and, through their appends, of the
 * leader's high-watermark loop and of the producer's acker): on 2 cores that held
 * acks="all" with one-record sends at 42,000-50,000 records/s, those wakes taking the
 * CPU the producer needed. So a follower whose wait ended less than pause_ns after it
 * began (records come closer together than that) sleeps pause_ns / GATHER_FRACTION
 * before it copies, and copies what came meanwhile in the same pass: 73,000-170,000
 * records/s on the same probe, for 60-90 us more at the median of a 20,000
 * records/s stream on one partition (end to end 112-136 -> 170-200 us). A wake
 * after a quieter spell copies at once. */
#define GATHER_FRACTION 4

int engine_replica_follow(void *leader, engine_cursor_t *cursor, void *follower, char *buf,
                          uint64_t buf_length, int64_t timeout_ns, int64_t pause_ns,
                          int64_t append_timeout_ns, const volatile uint32_t *stop,
                          uint64_t *needed_length) {
    int64_t deadline = mono_ns() + timeout_ns, pause = 0;
    int64_t pass_from = mono_ns(), pass_offset = cursor->offset;
    for (;;) {
        if (stopping(stop)) return ENGINE_RING_TIMEOUT;
        uint64_t length = 0;
        int code = engine_ring_read_replica(leader, cursor, buf, buf_length, &length,
                                            INT64_MAX);
        if (code == ENGINE_RING_OK) {
            code = engine_ring_append_raw(follower, buf, length, append_timeout_ns);
            if (code != ENGINE_RING_OK) return code;
            int64_t now = mono_ns();
            if (now >= deadline) return ENGINE_RING_TIMEOUT;
            /* Not backlogged, yet more is there already: let it gather. */
            pause = pause_after(pause, pause_ns, cursor->offset - pass_offset, now - pass_from);
            pass_from = now;
            pass_offset = cursor->offset;
            if (length < buf_length / 2 && pause > 0 &&
                engine_ring_wait(leader, cursor, 0, 0, 0) == ENGINE_RING_OK)
                pause_for(pause);
            continue;
        }
        if (code == ENGINE_RING_OUT_TOO_SMALL) {
            *needed_length = length;
            return code;
        }
        if (code != ENGINE_RING_EMPTY) return code; /* OVERWRITTEN, CORRUPT */
        if (engine_ring_sealed(leader)) return ENGINE_RING_SEALED;
        int64_t left = deadline - mono_ns();
        if (left <= 0) return ENGINE_RING_TIMEOUT;
        pause = 0;
        int64_t waited_from = mono_ns();
        if (engine_ring_wait(leader, cursor, left, 0, 0) == ENGINE_RING_OK &&
            mono_ns() - waited_from < pause_ns)
            pause_for(pause_ns / GATHER_FRACTION);
        pass_from = mono_ns();
        pass_offset = cursor->offset;
    }
}

/* A follower ring's log end offset, or -1 when it is not a follower ring of this
 * leadership (another leader epoch, or not sealed against producers). */
static int64_t follower_end(void *ring, int32_t leader_epoch, engine_cursor_t *mark) {
    engine_ring_status_t s;
    engine_ring_status(ring, &s);
    mark->position = s.tail_position;
    mark->offset = s.tail_offset;
    if (s.leader_epoch != leader_epoch || !s.sealed) return -1;
    return s.tail_offset;
}

int engine_replica_track(void *leader, engine_cursor_t *published, void **followers,
                         int32_t count, const uint8_t *in_isr, int32_t leader_epoch,
                         int64_t *ends, int64_t *caught_up_ns, int64_t timeout_ns,
                         int64_t pause_ns, const volatile uint32_t *stop) {
    if (count < 0 || count > ENGINE_REPLICA_MAX_FOLLOWERS) return ENGINE_RING_BAD_ARGUMENT;
    void *rings[ENGINE_REPLICA_MAX_FOLLOWERS + 1];
    engine_cursor_t marks[ENGINE_REPLICA_MAX_FOLLOWERS + 1];
    int64_t start = mono_ns(), deadline = start + timeout_ns, pause = 0;
    int64_t previous_end = -1; /* the leader's log end at the previous pass */
    int64_t pass_from = start, pass_end = published->offset; /* for pause_after */
    for (;;) {
        if (stopping(stop)) return ENGINE_RING_TIMEOUT;
        engine_ring_advance(leader, published);
        int64_t leader_end = published->offset, now = mono_ns();
        int64_t high_watermark = leader_end;
        int32_t waited = 0, joined = 0;
        engine_cursor_t at[ENGINE_REPLICA_MAX_FOLLOWERS];
        for (int32_t i = 0; i < count; i++) {
            if (followers[i]) ends[i] = follower_end(followers[i], leader_epoch, &at[i]);
            /* Caught up: holds what the leader held one pass ago (Kafka's
             * lastCaughtUpTime, which a busy leader's followers keep meeting). */
            if (ends[i] >= 0 && ends[i] >= (previous_end >= 0 ? previous_end : leader_end)) {
                caught_up_ns[i] = now;
                if (in_isr[i] == 0) joined = 1; /* not 1 (in the ISR), not 2 (refused) */
            }
            if (in_isr[i] == 1 && ends[i] < high_watermark) high_watermark = ends[i];
        }
        previous_end = leader_end;
        engine_ring_status_t s;
        engine_ring_status(leader, &s);
        if (high_watermark > s.high_watermark) engine_ring_set_high_watermark(leader, high_watermark);
        if (joined) return ENGINE_RING_OK; /* Python adds it to the ISR */
        /* Wait only on what can change the outcome: the in-sync followers at the
         * high watermark (it rises when they copy more; the leader's appends and
         * followers ahead of it cannot raise it) and the followers outside the ISR
         * (they may catch up); on the leader when none of them is there. */
        for (int32_t i = 0; i < count; i++) {
            if (followers[i] && (in_isr[i] != 1 || ends[i] <= high_watermark)) {
                rings[waited] = followers[i];
                marks[waited++] = at[i];
            }
        }
        if (waited == 0) {
            rings[waited] = leader;
            marks[waited++] = *published;
        }
        int64_t left = deadline - mono_ns();
        if (left <= 0) return ENGINE_RING_TIMEOUT;
        if (engine_ring_wait_any(rings, marks, waited, 0, 0, 0) >= 0) {
            /* More is coming: gather it, if the stream is dense enough to be worth it. */
            pause = pause_after(pause, pause_ns, leader_end - pass_end, now - pass_from);
            pass_from = now;
            pass_end = leader_end;
            pause_for(pause < left ? pause : left);
            continue;
        }
        pause = 0;
        engine_ring_wait_any(rings, marks, waited, left, 0, 0);
        pass_from = mono_ns();
        pass_end = leader_end;
    }
}
