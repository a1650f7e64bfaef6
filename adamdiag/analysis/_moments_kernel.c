/* The statistics of one chunk of Adam state in one pass: what moments._chunk_stats (sums, extremes,
 * counts) and _BracketSelect.feed (the quantile brackets) compute with a sequence of torch/numpy
 * passes, fused.
 *
 * Why: those passes cost ~8 ns per element on a large checkpoint (each re-reads the chunk; a numpy
 * boolean compress alone is ~1.5 ns), so `inspect` took ~10x a bare read. One pass here stays near
 * the cost of reading m, v and the parameter once. Loaded with ctypes (moments_kernel.py; no Python
 * C API, so one build serves every CPython). Optional: without it moments.py computes the same
 * numbers its own way, and tests/test_moments_kernel.py checks the two agree (and this file's
 * vector loop against its plain loop).
 *
 * Per element (float32; the caller upcasts bf16/fp16): finite = m, v and d (the denominator's v:
 * max_exp_avg_sq with amsgrad, else v) all finite. Over finite elements: the sums of v, |m| and
 * u² with u = m/(sqrt(max(d,0)) + e), the min and max of d, the max of v and u², the counts of
 * d <= 0 and of sqrt(max(d,0)) < t1 and < t2; per bracket j (sorted, disjoint [lo_j, hi_j], an
 * open tail has lo = -inf or hi = +inf) the count of d < lo_j, and the values of d inside it
 * (appended to row j of `kept`). Over all elements: the sum of p² over finite p.
 *
 * The vector loop (AVX2, chosen at run time) keeps its sums in float lanes over blocks of BLOCK
 * elements (then double, like torch's cascade sum within a chunk); a block holding a NaN or Inf, or
 * whose float sums overflow, is redone by the plain loop, which masks element by element and sums
 * in double.
 */
#include <math.h>
#include <stdint.h>

#define MAX_SPANS 8
#define BLOCK 1024

typedef struct {
    double sum_v, sum_abs_m, sum_u2, sum_p2;
    double min_d, max_d, max_v, max_u2;
    int64_t n_finite, zero, below1, below2;
    int64_t lt_lo[MAX_SPANS];
} adamdiag_acc;

typedef struct {
    float e, t1, t2;
    int32_t nspan;
    float lo[MAX_SPANS], hi[MAX_SPANS];
} adamdiag_params;

/* The plain loop: the reference the vector loop is tested against, and the path for a chunk's
 * tail, for CPUs without AVX2 and for blocks with non-finite values or overflowing float sums. */
static void block_plain(const float *m, const float *v, const float *d, const float *p, int64_t n,
                        const adamdiag_params *kp, adamdiag_acc *a, float *kept, int64_t stride, int64_t *kept_n) {
    for (int64_t i = 0; i < n; i++) {
        if (p) {
            float pi = p[i];
            if (isfinite(pi)) a->sum_p2 += (double)pi * (double)pi;
        }
        float mi = m[i], vi = v[i], di = d[i];
        if (!(isfinite(mi) && isfinite(vi) && isfinite(di))) continue;
        a->n_finite++;
        a->sum_v += vi;
        a->sum_abs_m += fabsf(mi);
        if (di < a->min_d) a->min_d = di;
        if (di > a->max_d) a->max_d = di;
        if (vi > a->max_v) a->max_v = vi;
        if (di <= 0.0f) a->zero++;
        float s = sqrtf(di > 0.0f ? di : 0.0f);
        a->below1 += s < kp->t1;
        a->below2 += s < kp->t2;
        float u = mi / (s + kp->e);
        float u2 = u * u;
        a->sum_u2 += u2;
        if (u2 > a->max_u2 || isnan(u2)) a->max_u2 = u2; /* 0/0 (eps 0): NaN, as torch's max */
        for (int j = 0; j < kp->nspan; j++) {
            a->lt_lo[j] += di < kp->lo[j];
            if (di >= kp->lo[j] && di <= kp->hi[j]) kept[j * stride + kept_n[j]++] = di;
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ADAMDIAG_PLAIN_ONLY)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* Left-pack permutations: entry b moves the lanes whose bit is set in b to the front. */
static int32_t pack_lut[256][8];

static void init_lut(void) {
    for (int b = 0; b < 256; b++) {
        int k = 0;
        for (int j = 0; j < 8; j++)
            if (b & (1 << j)) pack_lut[b][k++] = j;
        for (; k < 8; k++) pack_lut[b][k] = 0;
    }
}

__attribute__((target("avx2,fma,popcnt"))) static double hsum8(__m256 x) {
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
    __m256d s = _mm256_add_pd(lo, hi);
    double t[4];
    _mm256_storeu_pd(t, s);
    return (t[0] + t[1]) + (t[2] + t[3]);
}

__attribute__((target("avx2,fma,popcnt"))) static float hred8(__m256 x, int want_max) {
    float t[8], r;
    _mm256_storeu_ps(t, x);
    r = t[0];
    for (int j = 1; j < 8; j++) r = want_max ? (t[j] > r ? t[j] : r) : (t[j] < r ? t[j] : r);
    return r;
}

__attribute__((target("avx2,fma,popcnt"))) static int64_t hcount8(__m256i c) {
    int32_t t[8];
    _mm256_storeu_si256((__m256i *)t, c);
    int64_t r = 0;
    for (int j = 0; j < 8; j++) r += t[j];
    return r;
}

/* The bracket test of NS brackets over n (a multiple of 8) finite values: counts d < lo_j into
 * below[j] and left-packs the values inside any bracket into out; returns how many. Brackets are
 * sorted and disjoint (lo_j <= hi_j < lo_{j+1}; open tails have lo = -inf or hi = +inf), so d lies
 * in bracket j iff d >= lo_j and d <= hi_j, and as d < lo_j implies d <= hi_j, "inside some
 * bracket" is the XOR of all 2·NS comparisons. NS is a constant in each instance, so the loop over
 * brackets unrolls and every counter stays in a register. */
__attribute__((target("avx2,fma,popcnt"), always_inline)) static inline int64_t
select_pack_n(const float *d, int64_t n, const int NS, const float *lo_s, const float *hi_s, int64_t *below,
              float *out) {
    __m256 lo[MAX_SPANS], hi[MAX_SPANS];
    __m256i clt[MAX_SPANS];
    for (int j = 0; j < NS; j++) {
        lo[j] = _mm256_set1_ps(lo_s[j]);
        hi[j] = _mm256_set1_ps(hi_s[j]);
        clt[j] = _mm256_setzero_si256();
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n; i += 8) {
        __m256 dv = _mm256_loadu_ps(d + i), in = _mm256_setzero_ps();
        for (int j = 0; j < NS; j++) {
            __m256 lt = _mm256_cmp_ps(dv, lo[j], _CMP_LT_OQ);
            clt[j] = _mm256_sub_epi32(clt[j], _mm256_castps_si256(lt));
            in = _mm256_xor_ps(in, _mm256_xor_ps(lt, _mm256_cmp_ps(dv, hi[j], _CMP_LE_OQ)));
        }
        /* always stored (out has 8 spare floats): a data-dependent branch here mispredicts */
        int bits = _mm256_movemask_ps(in);
        _mm256_storeu_ps(out + k, _mm256_permutevar8x32_ps(dv, _mm256_loadu_si256((const __m256i *)pack_lut[bits])));
        k += __builtin_popcount((unsigned)bits);
    }
    for (int j = 0; j < NS; j++) below[j] = hcount8(clt[j]);
    return k;
}

__attribute__((target("avx2,fma,popcnt"))) static int64_t select_pack(const float *d, int64_t n, int ns,
                                                                      const float *lo, const float *hi,
                                                                      int64_t *below, float *out) {
    switch (ns) {
    case 1: return select_pack_n(d, n, 1, lo, hi, below, out);
    case 2: return select_pack_n(d, n, 2, lo, hi, below, out);
    case 3: return select_pack_n(d, n, 3, lo, hi, below, out);
    case 4: return select_pack_n(d, n, 4, lo, hi, below, out);
    case 5: return select_pack_n(d, n, 5, lo, hi, below, out);
    case 6: return select_pack_n(d, n, 6, lo, hi, below, out);
    case 7: return select_pack_n(d, n, 7, lo, hi, below, out);
    default: return select_pack_n(d, n, 8, lo, hi, below, out);
    }
}

/* n is a multiple of 8 and at most BLOCK. Assumes every element is finite and checks it
 * afterwards from the float sums (a NaN or Inf in m, v, d or p makes its sum non-finite): returns
 * -1 then, and also when a float sum overflowed, having accumulated nothing; the caller redoes the
 * block with block_plain, which masks element by element. Else returns 0, having appended the values
 * inside each bracket j to kept + j * stride (advancing kept_n[j]). */
__attribute__((target("avx2,fma,popcnt"))) static int64_t block_avx2(const float *m, const float *v, const float *d,
                                                                     const float *p, int64_t n,
                                                                     const adamdiag_params *kp, adamdiag_acc *a,
                                                                     float *kept, int64_t stride, int64_t *kept_n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 inf = _mm256_set1_ps(INFINITY), zero = _mm256_setzero_ps();
    const __m256 e = _mm256_set1_ps(kp->e), t1 = _mm256_set1_ps(kp->t1), t2 = _mm256_set1_ps(kp->t2);
    __m256 sm = zero, sd = zero, su = zero, sp = zero, mxu = zero;
    /* Σv in double lanes: the decay-ratio view subtracts β2^Δ·v̄_a from v̄_b, nearly equal numbers, so a
     * float block sum (rel. error ~1e-6) would show in its printed ratio; double matches the torch path. */
    __m256d svlo = _mm256_setzero_pd(), svhi = _mm256_setzero_pd();
    __m256 mn = inf, mx = _mm256_set1_ps(-INFINITY), mxv = mx;
    __m256i czero = _mm256_setzero_si256(), cb1 = czero, cb2 = czero;
    const int ns = kp->nspan;
    const int same = d == v;
    for (int64_t i = 0; i < n; i += 8) {
        __m256 mv = _mm256_loadu_ps(m + i), vv = _mm256_loadu_ps(v + i);
        __m256 dv = same ? vv : _mm256_loadu_ps(d + i);
        svlo = _mm256_add_pd(svlo, _mm256_cvtps_pd(_mm256_castps256_ps128(vv)));
        svhi = _mm256_add_pd(svhi, _mm256_cvtps_pd(_mm256_extractf128_ps(vv, 1)));
        sm = _mm256_add_ps(sm, _mm256_and_ps(mv, absmask));
        mn = _mm256_min_ps(dv, mn);
        mx = _mm256_max_ps(dv, mx);
        if (!same) {
            sd = _mm256_add_ps(sd, dv); /* only to see a NaN/Inf in d (below) */
            mxv = _mm256_max_ps(vv, mxv);
        }
        czero = _mm256_sub_epi32(czero, _mm256_castps_si256(_mm256_cmp_ps(dv, zero, _CMP_LE_OQ)));
        __m256 s = _mm256_sqrt_ps(_mm256_max_ps(dv, zero));
        cb1 = _mm256_sub_epi32(cb1, _mm256_castps_si256(_mm256_cmp_ps(s, t1, _CMP_LT_OQ)));
        cb2 = _mm256_sub_epi32(cb2, _mm256_castps_si256(_mm256_cmp_ps(s, t2, _CMP_LT_OQ)));
        __m256 u = _mm256_div_ps(mv, _mm256_add_ps(s, e));
        __m256 u2 = _mm256_mul_ps(u, u);
        su = _mm256_add_ps(su, u2);
        mxu = _mm256_max_ps(u2, mxu); /* a NaN u² makes su NaN: the block goes to the plain loop */
        if (p) {
            __m256 pv = _mm256_loadu_ps(p + i);
            sp = _mm256_fmadd_ps(pv, pv, sp);
        }
    }
    double vl[4];
    _mm256_storeu_pd(vl, _mm256_add_pd(svlo, svhi));
    double f_sv = (vl[0] + vl[1]) + (vl[2] + vl[3]);
    double f_sm = hsum8(sm), f_sd = hsum8(sd), f_su = hsum8(su), f_sp = hsum8(sp);
    /* u² may legitimately be Inf (huge m over a tiny denominator); the plain loop gives the same */
    if (!(isfinite(f_sv) && isfinite(f_sm) && isfinite(f_sd) && isfinite(f_sp) && !isnan(f_su))) return -1;
    a->sum_v += f_sv;
    a->sum_abs_m += f_sm;
    a->sum_u2 += f_su;
    a->sum_p2 += f_sp;
    a->n_finite += n;
    a->zero += hcount8(czero);
    a->below1 += hcount8(cb1);
    a->below2 += hcount8(cb2);
    const float bmin = hred8(mn, 0), bmax = hred8(mx, 1);
    /* Brackets the block's [min, max] cannot touch cost nothing (a block of one row of a weight
     * often spans a narrow range); the others are tested over the block while it is in L1: values
     * inside any of them are left-packed into scratch, then sorted out by bracket (a few %). */
    float lo[MAX_SPANS], hi[MAX_SPANS], scratch[BLOCK + 8];
    int64_t below[MAX_SPANS];
    int idx[MAX_SPANS], na = 0;
    for (int j = 0; j < ns; j++) {
        if (bmax < kp->lo[j]) a->lt_lo[j] += n;
        else if (bmin <= kp->hi[j]) { lo[na] = kp->lo[j]; hi[na] = kp->hi[j]; idx[na++] = j; }
    }
    int64_t got = na ? select_pack(d, n, na, lo, hi, below, scratch) : 0;
    for (int t = 0; t < na; t++) a->lt_lo[idx[t]] += below[t];
    for (int64_t t = 0; t < got; t++) {
        float x = scratch[t];
        int j = 0;
        while (j + 1 < na && x >= lo[j + 1]) j++;
        kept[idx[j] * stride + kept_n[idx[j]]++] = x;
    }
    float f;
    if (bmin < a->min_d) a->min_d = bmin;
    if (bmax > a->max_d) a->max_d = bmax;
    if ((f = same ? bmax : hred8(mxv, 1)) > a->max_v) a->max_v = f;
    if ((f = hred8(mxu, 1)) > a->max_u2) a->max_u2 = f;
    return 0;
}

static int avx2_ok = -1;
#endif

/* The layout the Python side (moments_kernel.py) must match: a library built from an older source
 * (an editable install not rebuilt after a pull) is refused there instead of misread. Bump ABI with
 * any change to the structs or signatures. */
#define ADAMDIAG_KERNEL_ABI 1
int64_t adamdiag_kernel_abi(void) {
    return ADAMDIAG_KERNEL_ABI * 1000000 + (int64_t)sizeof(adamdiag_acc) * 1000 + (int64_t)sizeof(adamdiag_params);
}

/* 1 when the vector path is used on this CPU (for the tests' and the benchmark's record). */
int adamdiag_vector_path(void) {
#ifdef HAVE_AVX2_PATH
    if (__atomic_load_n(&avx2_ok, __ATOMIC_ACQUIRE) < 0) {
        __builtin_cpu_init();
        int ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
        if (ok) init_lut(); /* before the flag is published: another thread may read it next */
        __atomic_store_n(&avx2_ok, ok, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&avx2_ok, __ATOMIC_ACQUIRE);
#else
    return 0;
#endif
}

/* The whole chunk (any n). The values of d inside bracket j are appended to kept + j * stride
 * (kept_n[j] of them there already; stride >= n + 8 + kept_n[j]), kept_n[j] is advanced. plain != 0
 * forces the plain loop (the tests' reference). Returns 0, or -1 on bad arguments. */
int64_t adamdiag_chunk_stats(const float *m, const float *v, const float *d, const float *p, int64_t n,
                             const adamdiag_params *kp, adamdiag_acc *a, float *kept, int64_t stride,
                             int64_t *kept_n, int32_t plain) {
    if (kp->nspan < 0 || kp->nspan > MAX_SPANS || n < 0) return -1;
    for (int j = 0; j < kp->nspan; j++)
        if (stride < kept_n[j] + n + 8) return -1;
    int64_t i = 0;
#ifdef HAVE_AVX2_PATH
    if (!plain && adamdiag_vector_path()) {
        for (; i + 8 <= n; i += BLOCK) {
            int64_t len = n - i < BLOCK ? n - i : BLOCK;
            len -= len % 8;
            if (block_avx2(m + i, v + i, d + i, p ? p + i : 0, len, kp, a, kept, stride, kept_n) < 0)
                block_plain(m + i, v + i, d + i, p ? p + i : 0, len, kp, a, kept, stride, kept_n);
            if (len < BLOCK) { i += len; break; }
        }
    }
#endif
    (void)plain;
    block_plain(m + i, v + i, d + i, p ? p + i : 0, n - i, kp, a, kept, stride, kept_n);
    return 0;
}
