/*
 * atomic.h - every memory-ordering operation of the hot path, in one place.
 *
 * Shared memory is mapped by several processes at once; these helpers are the
 * only way the C code touches a word that another process may touch at the
 * same time. They are the GCC/Clang __atomic builtins, which are lock-free for
 * aligned 32- and 64-bit words on every platform we build for, so they work
 * across processes (they never fall back to a process-local lock).
 *
 * Vocabulary:
 *   load_acquire   - later reads and writes cannot move before it.
 *   store_release  - earlier reads and writes cannot move after it.
 *   cas            - compare-and-swap, acquire+release on success.
 *   fence          - a full (sequentially consistent) fence: used by the
 *                    eventcount wait/wake protocol (Dekker pattern).
 *   acquire_fence  - orders earlier plain loads (a copy out of the ring)
 *                    before a later load (the seqlock-style validation).
 */
#ifndef ENGINE_ATOMIC_H
#define ENGINE_ATOMIC_H

#include <stdint.h>

static inline uint64_t engine_load_acquire_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline int64_t engine_load_acquire_i64(const int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint32_t engine_load_acquire_u32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint64_t engine_load_relaxed_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline uint32_t engine_load_relaxed_u32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void engine_store_release_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void engine_store_release_i64(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void engine_store_release_u32(uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void engine_store_release_i32(int32_t *p, int32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline int32_t engine_load_acquire_i32(const int32_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
/* Returns 1 and replaces *p with desired when *p == expected; else 0. */
static inline int engine_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline int engine_cas_i32(int32_t *p, int32_t expected, int32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
static inline uint32_t engine_fetch_add_u32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
static inline uint64_t engine_fetch_add_u64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline uint32_t engine_fetch_sub_u32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_sub(p, v, __ATOMIC_ACQ_REL);
}
static inline void engine_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void engine_acquire_fence(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }

static inline void engine_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

#endif
