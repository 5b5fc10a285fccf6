/* Log-linear histogram index shared by every Heimdall probe.
 *
 * Values below HIST_SUB are their own bucket; above, each power of two is
 * split into HIST_SUB equal sub-buckets, so a bucket is at most 1/HIST_SUB
 * (6.25 %) wide relative to its value: a 10 % move of a p99 shows.
 * No loops and no floats, so the verifier accepts it anywhere.
 * probes/histogram.py mirrors this arithmetic to decode bucket bounds.
 */
#ifndef HEIMDALL_HISTOGRAM_BPF_H
#define HEIMDALL_HISTOGRAM_BPF_H

#define HIST_SUB_BITS 4
#define HIST_SUB (1 << HIST_SUB_BITS)
/* highest index: exponent 63 -> (63 - HIST_SUB_BITS + 1) * HIST_SUB + HIST_SUB - 1 */
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

static __always_inline u32 hist_log2(u64 v)
{
    u32 r, shift;
    r = (v > 0xFFFFFFFFULL) << 5; v >>= r;
    shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
    shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
    shift = (v > 0xF) << 2; v >>= shift; r |= shift;
    shift = (v > 0x3) << 1; v >>= shift; r |= shift;
    r |= (v >> 1);
    return r;
}

/* Bucket index of v, always in [0, HIST_BUCKETS). */
static __always_inline u32 hist_index(u64 v)
{
    if (v < HIST_SUB)
        return (u32)v;
    u32 e = hist_log2(v);                       /* e >= HIST_SUB_BITS */
    u32 sub = (u32)(v >> (e - HIST_SUB_BITS)) & (HIST_SUB - 1);
    u32 idx = (e - HIST_SUB_BITS + 1) * HIST_SUB + sub;
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* Index of value v in slot `slot` of a BPF_ARRAY declared with
 * HIST_BUCKETS * nslots entries (one histogram per slot). BCC forbids map
 * calls inside macros, so callers do: `table.atomic_increment(hist_key(0, v));` */
static __always_inline int hist_key(u32 slot, u64 v)
{
    return (int)(slot * HIST_BUCKETS + hist_index(v));
}

#endif
