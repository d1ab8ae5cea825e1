/* Algorithm 1 of Sadat et al. (arXiv 2410.02416) fused into two memory passes per sample, for the CPU.

   pass 1: diff = cond - uncond, with momentum running = diff + beta * running (stored) and diff = running, and
           the per-sample sums ||diff||^2, <diff, cond>, ||cond||^2;
   pass 2: out = a cond + k diff, k = (w - 1) min(1, r / ||diff||), a = 1 - (1 - eta) k <diff, cond> / ||cond||^2.

   The stock CFG line `uncond + w * (cond - uncond)` makes three passes and two temporaries; this makes two and none.
   Built by apg/_fused.py with the system C compiler and called through ctypes: plain C, no torch headers. Tensors
   are contiguous [B, n]; the momentum buffer is float32 whatever the input dtype, zeros before the first step.
   OpenMP is torch's own runtime (same soname), and the caller passes torch.get_num_threads(). */

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768
/* The sums run in float over blocks of this many elements (32 terms per lane of 16), and the block totals add up
   in double: the error is that of a 32-term float sum, and it runs 1.3-1.5x faster than double accumulators,
   which made the loop compute-bound. (Squares overflow float32 above ~1e19, as they do in torch's norm.) */
#define BLOCK 512

/* Loads widen to float32 and stores round to nearest even, as torch's casts do. float16 is not served here: gcc
   leaves _Float16 casts scalar and a portable bit-level conversion costs more than torch's F16C casts around the
   float32 kernel (apg/_fused.py does that). */
static inline float as_float(uint32_t bits) { float x; memcpy(&x, &bits, 4); return x; }
static inline uint32_t as_bits(float x) { uint32_t bits; memcpy(&bits, &x, 4); return bits; }

static inline float load_f32(const float *p, int64_t i) { return p[i]; }
static inline void store_f32(float *p, int64_t i, float x) { p[i] = x; }

static inline float load_bf16(const uint16_t *p, int64_t i) { return as_float((uint32_t)p[i] << 16); }
static inline void store_bf16(uint16_t *p, int64_t i, float x) {
    uint32_t bits = as_bits(x);
    uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    p[i] = (uint16_t)(x != x ? 0x7FC0u : rounded);
}

/* k and a (see the top) from the sums; written so that diff = 0 or cond = 0 give no 0/0. */
static void coefficients(const double sums[3], double w, double eta, double r, float *a, float *k) {
    double kk = r > 0.0 ? (w - 1.0) * r / fmax(sqrt(sums[0]), r) : w - 1.0;
    *a = (float)(1.0 - (1.0 - eta) * kk * (sums[1] / fmax(sums[2], 1e-300)));  /* cond = 0: <diff, cond> = 0 */
    *k = (float)kk;
}

#ifdef _OPENMP
#include <omp.h>
#define THREAD_RANGE(n, lo, hi)                                                                                \
    int64_t lo = (n) * omp_get_thread_num() / omp_get_num_threads();                                           \
    int64_t hi = (n) * (omp_get_thread_num() + 1) / omp_get_num_threads();
#else
#define THREAD_RANGE(n, lo, hi) int64_t lo = 0, hi = (n);
#endif

/* Three functions per dtype S (element type T) and momentum M. M is a literal in each body: OpenMP outlines the
   parallel regions before constants propagate, so a runtime flag would leave branches in the loops and stop
   gcc from vectorising them. Threads take contiguous ranges and run `omp simd` inside: the combined
   `parallel for simd` with a double reduction did not vectorise and ran slower on two threads than on one. */
#define DEFINE_PASSES(S, T, M)                                                                                  \
    static void sums_##S##_##M(const T *cond, const T *uncond, float *running, int64_t lo, int64_t hi,          \
                               float beta, double sums[3]) {                                                    \
        for (int64_t start = lo; start < hi; start += BLOCK) {                                                  \
            int64_t end = start + BLOCK < hi ? start + BLOCK : hi;                                              \
            float dd = 0.0f, dc = 0.0f, cc = 0.0f;                                                              \
            _Pragma("omp simd reduction(+ : dd, dc, cc) simdlen(16)")                                           \
            for (int64_t i = start; i < end; i++) {                                                             \
                float c = load_##S(cond, i), d = c - load_##S(uncond, i);                                       \
                if (M) running[i] = d = d + beta * running[i];                                                  \
                dd += d * d, dc += d * c, cc += c * c;                                                          \
            }                                                                                                   \
            sums[0] += dd, sums[1] += dc, sums[2] += cc;                                                        \
        }                                                                                                       \
    }                                                                                                           \
    static void write_##S##_##M(const T *cond, const T *uncond, const float *running, T *out, int64_t lo,       \
                                int64_t hi, float a, float k) {                                                 \
        _Pragma("omp simd")                                                                                     \
        for (int64_t i = lo; i < hi; i++) {                                                                     \
            float c = load_##S(cond, i);                                                                        \
            store_##S(out, i, a * c + k * (M ? running[i] : c - load_##S(uncond, i)));                          \
        }                                                                                                       \
    }                                                                                                           \
    /* Whole samples go one per thread, in one parallel region, unless large samples would leave threads idle:  \
       then each sample is split across all threads. */                                                         \
    static void batch_##S##_##M(const T *cond, const T *uncond, float *running, T *out, int64_t batch,          \
                                int64_t n, double scale, const float *scales, double eta, double r, double beta, \
                                int threads) {                                                                  \
        if (n >= PARALLEL_MIN && batch % threads != 0) {                                                        \
            for (int64_t b = 0; b < batch; b++) {                                                               \
                const T *c = cond + b * n, *u = uncond + b * n;                                                 \
                float *run = M ? running + b * n : 0, a, k;                                                     \
                double dd = 0.0, dc = 0.0, cc = 0.0;                                                            \
                _Pragma("omp parallel reduction(+ : dd, dc, cc) num_threads(threads)") {                        \
                    THREAD_RANGE(n, lo, hi)                                                                     \
                    double sums[3] = {0.0, 0.0, 0.0};                                                           \
                    sums_##S##_##M(c, u, run, lo, hi, (float)beta, sums);                                       \
                    dd += sums[0], dc += sums[1], cc += sums[2];                                                \
                }                                                                                               \
                const double sums[3] = {dd, dc, cc};                                                            \
                coefficients(sums, scales ? scales[b] : scale, eta, r, &a, &k);                                 \
                _Pragma("omp parallel num_threads(threads)") {                                                  \
                    THREAD_RANGE(n, lo, hi)                                                                     \
                    write_##S##_##M(c, u, run, out + b * n, lo, hi, a, k);                                      \
                }                                                                                               \
            }                                                                                                   \
            return;                                                                                             \
        }                                                                                                       \
        _Pragma("omp parallel for schedule(static) if (batch * n >= PARALLEL_MIN) num_threads(threads)")       \
        for (int64_t b = 0; b < batch; b++) {                                                                   \
            const T *c = cond + b * n, *u = uncond + b * n;                                                     \
            float *run = M ? running + b * n : 0, a, k;                                                         \
            double sums[3] = {0.0, 0.0, 0.0};                                                                   \
            sums_##S##_##M(c, u, run, 0, n, (float)beta, sums);                                                 \
            coefficients(sums, scales ? scales[b] : scale, eta, r, &a, &k);                                     \
            write_##S##_##M(c, u, run, out + b * n, 0, n, a, k);                                                \
        }                                                                                                       \
    }

/* cond, uncond, out: [B, n]; running: [B, n] float32, or NULL without momentum; scales: [B], or NULL for `scale`. */
#define DEFINE_APG(S, T)                                                                                        \
    DEFINE_PASSES(S, T, 0)                                                                                      \
    DEFINE_PASSES(S, T, 1)                                                                                      \
    void apg_##S(const T *cond, const T *uncond, float *running, T *out, int64_t batch, int64_t n,             \
                 double scale, const float *scales, double eta, double r, double beta, int threads) {           \
        (running ? batch_##S##_1 : batch_##S##_0)(cond, uncond, running, out, batch, n, scale, scales, eta, r,  \
                                                  beta, threads);                                               \
    }

DEFINE_APG(f32, float)
DEFINE_APG(bf16, uint16_t)
