/* The live monitor's per-tensor statistics (adamdiag/monitor/stats.py, StatsEngine.tensor_row) of a
 * contiguous float32 CPU tensor in one read of g, v (and d), fused.
 *
 * Why: the torch path makes ~8 passes over each 256K-element chunk (dot, sum, shift, bincount, two
 * compares + sums, clamp, divide, dot), ~2 ns per element on one core; at every=10 on the 10M bench
 * model that is ~25-30 ms per logging step, close to the 3% budget. One pass here reads g and d once
 * (v too with amsgrad). Loaded with ctypes (adamdiag/monitor/kernel.py; no Python C API, so one
 * build serves every CPython). Optional: without it (or with ADAMDIAG_NO_KERNEL=1) the torch path
 * computes the same numbers; tests/monitor/test_monitor_kernel.py checks they agree.
 *
 * Per element, with g the gradient Adam squared, v = exp_avg_sq, d the denominator's state
 * (max_exp_avg_sq with amsgrad, else v itself) and t1, t2 = eps²·(1-β2^t), 100·eps²·(1-β2^t) as
 * float32 (the caller rounds them exactly as the torch path does):
 *   sum_g2  += (double)g · (double)g                     (exact products, no float overflow)
 *   sum_v   += v,  sum_d += d                            (double)
 *   sum_upd += (double)g · (double)(g / max(d, t1))      (the quotient in float32, as torch's
 *                                                         div(g, clamp(d, t1)); a NaN d stays NaN)
 *   below1  += d < t1,  below2 += d < t2                 (NaN: not below)
 *   hist[(bits(d) >> 23) & 255] += 1                     (d's exponent bits: the sign is dropped,
 *                                                         NaN/inf in 255, zero/subnormal in 0)
 * Sums are in double (non-finite values propagate as IEEE double sums do, in any order), so the
 * vector loop needs no fallback for NaN/Inf blocks. The AVX2 loop (chosen at run time) keeps 4
 * double lanes per sum; the plain loop is its reference (tests) and handles the tail.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define NBINS 256
/* Elements per block whose bin counts fit the uint32 sub-histograms before they are flushed. */
#define FLUSH ((int64_t)1 << 30)

typedef struct {
    double sum_g2, sum_v, sum_d, sum_upd;
    int64_t below1, below2, n;
    int64_t hist[NBINS];
} adamdiag_mon_acc;

/* The plain loop: the reference for the vector loop, the tail, and CPUs without AVX2. */
static void mon_plain(const float *g, const float *v, const float *d, int64_t n, float t1, float t2,
                      adamdiag_mon_acc *a) {
    double s_g2 = 0, s_v = 0, s_d = 0, s_u = 0;
    int64_t b1 = 0, b2 = 0;
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i], vi = v[i], di = d[i];
        s_g2 += (double)gi * (double)gi;
        s_v += vi;
        s_d += di;
        b1 += di < t1;
        b2 += di < t2;
        float q = gi / (di < t1 ? t1 : di); /* clamp(d, min=t1): NaN d stays NaN */
        s_u += (double)gi * (double)q;
        uint32_t bits;
        memcpy(&bits, &di, 4);
        a->hist[(bits >> 23) & 255u]++;
    }
    a->sum_g2 += s_g2;
    a->sum_v += s_v;
    a->sum_d += s_d;
    a->sum_upd += s_u;
    a->below1 += b1;
    a->below2 += b2;
    a->n += n;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ADAMDIAG_PLAIN_ONLY)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

__attribute__((target("avx2,fma"))) static double hsum4d(__m256d x) {
    double t[4];
    _mm256_storeu_pd(t, x);
    return (t[0] + t[1]) + (t[2] + t[3]);
}

__attribute__((target("avx2,fma"))) static int64_t hcount8(__m256i c) {
    int32_t t[8];
    _mm256_storeu_si256((__m256i *)t, c);
    int64_t r = 0;
    for (int j = 0; j < 8; j++) r += t[j];
    return r;
}

/* n a multiple of 8, n < 2^31 (the int32 count lanes). The bin counts go to four interleaved uint32
 * sub-histograms: d often sits in a handful of bins, and consecutive increments of one counter would
 * wait on each other's store. */
__attribute__((target("avx2,fma"))) static void mon_avx2(const float *g, const float *v, const float *d, int64_t n,
                                                       float t1s, float t2s, adamdiag_mon_acc *a,
                                                       uint32_t sub[4][NBINS]) {
    const __m256 t1 = _mm256_set1_ps(t1s), t2 = _mm256_set1_ps(t2s);
    const __m256i m255 = _mm256_set1_epi32(255);
    __m256d sg = _mm256_setzero_pd(), sv = sg, sd = sg, su = sg;
    __m256i c1 = _mm256_setzero_si256(), c2 = c1;
    const int same = d == v;
    int32_t ex[8];
    for (int64_t i = 0; i < n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), dv = _mm256_loadu_ps(d + i);
        __m256d glo = _mm256_cvtps_pd(_mm256_castps256_ps128(gv)), ghi = _mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1));
        sg = _mm256_fmadd_pd(glo, glo, sg);
        sg = _mm256_fmadd_pd(ghi, ghi, sg);
        __m256d dlo = _mm256_cvtps_pd(_mm256_castps256_ps128(dv)), dhi = _mm256_cvtps_pd(_mm256_extractf128_ps(dv, 1));
        sd = _mm256_add_pd(sd, _mm256_add_pd(dlo, dhi));
        if (!same) {
            __m256 vv = _mm256_loadu_ps(v + i);
            sv = _mm256_add_pd(sv, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(vv)),
                                                 _mm256_cvtps_pd(_mm256_extractf128_ps(vv, 1))));
        }
        c1 = _mm256_sub_epi32(c1, _mm256_castps_si256(_mm256_cmp_ps(dv, t1, _CMP_LT_OQ)));
        c2 = _mm256_sub_epi32(c2, _mm256_castps_si256(_mm256_cmp_ps(dv, t2, _CMP_LT_OQ)));
        /* max(t1, d): MAXPS returns its second operand when either is NaN, so a NaN d stays NaN */
        __m256 q = _mm256_div_ps(gv, _mm256_max_ps(t1, dv));
        su = _mm256_fmadd_pd(glo, _mm256_cvtps_pd(_mm256_castps256_ps128(q)), su);
        su = _mm256_fmadd_pd(ghi, _mm256_cvtps_pd(_mm256_extractf128_ps(q, 1)), su);
        _mm256_storeu_si256((__m256i *)ex, _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(dv), 23), m255));
        sub[0][ex[0]]++;
        sub[1][ex[1]]++;
        sub[2][ex[2]]++;
        sub[3][ex[3]]++;
        sub[0][ex[4]]++;
        sub[1][ex[5]]++;
        sub[2][ex[6]]++;
        sub[3][ex[7]]++;
    }
    a->sum_g2 += hsum4d(sg);
    a->sum_d += hsum4d(sd);
    a->sum_v += same ? hsum4d(sd) : hsum4d(sv);
    a->sum_upd += hsum4d(su);
    a->below1 += hcount8(c1);
    a->below2 += hcount8(c2);
    a->n += n;
}

static int avx2_ok = -1;
#endif

/* The layout the Python side (kernel.py) must match: a library built from an older source (an
 * editable install not rebuilt after a pull) is refused there instead of misread. Bump the ABI
 * with any change to the struct or the signatures. */
#define ADAMDIAG_MONITOR_KERNEL_ABI 1
int64_t adamdiag_monitor_kernel_abi(void) {
    return ADAMDIAG_MONITOR_KERNEL_ABI * 1000000 + (int64_t)sizeof(adamdiag_mon_acc);
}

/* 1 when the vector loop is used on this CPU (for the tests' and the benchmark's record). */
int adamdiag_monitor_vector_path(void) {
#ifdef HAVE_AVX2_PATH
    if (__atomic_load_n(&avx2_ok, __ATOMIC_ACQUIRE) < 0) {
        __builtin_cpu_init();
        __atomic_store_n(&avx2_ok, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&avx2_ok, __ATOMIC_ACQUIRE);
#else
    return 0;
#endif
}

/* Adds n elements of g, v, d (d may be v) to *a. plain != 0 forces the plain loop (the tests'
 * reference). Returns 0, or -1 on bad arguments. */
int64_t adamdiag_monitor_stats(const float *g, const float *v, const float *d, int64_t n, float t1, float t2,
                               adamdiag_mon_acc *a, int32_t plain) {
    if (n < 0 || (n > 0 && !(g && v && d && a))) return -1;
    int64_t i = 0;
#ifdef HAVE_AVX2_PATH
    if (!plain && n >= 8 && adamdiag_monitor_vector_path()) {
        uint32_t sub[4][NBINS];
        while (n - i >= 8) {
            int64_t len = n - i < FLUSH ? n - i : FLUSH;
            len -= len % 8;
            memset(sub, 0, sizeof sub);
            mon_avx2(g + i, v + i, d + i, len, t1, t2, a, sub);
            for (int k = 0; k < NBINS; k++)
                a->hist[k] += (int64_t)sub[0][k] + sub[1][k] + sub[2][k] + sub[3][k];
            i += len;
        }
    }
#endif
    (void)plain;
    mon_plain(g + i, v + i, d + i, n - i, t1, t2, a);
    return 0;
}
