/* llm1bit: y = x W^T straight from binary-coded (BCQ) weights, never building W.

   W[n, k] = sum_b alpha[b, block(n, k)] * s_b[n, k],  s in {-1, +1}.  Per plane and row this is a signed
   sum of activations, computed with tables of partial sums (T-MAC / LUT-GEMM):

   * AVX-512: for every 4 consecutive activations, the 16 signed sums +-x0 +-x1 +-x2 +-x3 are one fp32
     table in one register; `vpermps` looks up 16 rows at once (lane = output row, its index = the
     nibble of codes of that row; vpermps reads only bits 0-3 of each 32-bit index, so a row's 4 code
     bytes sit in one lane and are brought down by shifts, never masked).
   * AVX2: 8 lanes, `vpermps` reads 3 bits: each code byte is split 3 + 3 + 2 columns (8-entry tables;
     the 2-column table repeats itself in lanes 4-7, so the stray third bit does not matter).

   Two ways the scales enter (the layout is built once, at load, by llm1bit/quant/kernel/layout.py):
   * mode 0 (block scales, lat: one scale per 8 input columns x a block of rows x plane): the tables
     hold the signed sums of x and are shared by every row and plane; after each code byte's lookups
     the partial sum is multiplied by its scale (one fma).
   * mode 1 (column scales, acc and bcq: one scale per input column x a block of rows x plane): the
     tables hold the signed sums of alpha * x for one row block and plane; lookups are only added.
   Everything is fp32 (tables, products, accumulators): exact operations up to fp32 rounding.

   Layout (T tiles of 16 rows, RT = 4 tiles per group, C = kp / 32 chunks of 4 code bytes):
     codes  uint8 (groups, C, q, RT, 16 rows, 4 bytes): lane l of the 64-byte unit = its row's 4 bytes
     alpha  mode 0: fp32 (groups, C, q, RT, 4) one scale per tile and code byte, or (indexed) the layer's
            distinct scales, alpha_index uint16 (groups, C, q, RT, 4) pointing into them
            mode 1: fp32 (nrb, q, kp) one scale per column, row block and plane
     rows   int32 (groups * RT * 16): the output row of every lane, -1 for padding
     group_rb int32 (groups): mode 1, the row block shared by the group's tiles

   Threads: the calling thread plus up to (threads - 1) pooled helpers (see pool_run), taking chunks of
   groups (= output rows) from a shared counter; a group is computed the same way whichever thread takes it,
   so the result has the same bits for any thread count. Compiled without -ffast-math and with -ffp-contract=off. */

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TILE 16
#define RT 4
#define MAXM 4    /* tokens per pass over a group's codes (register accumulators) */
#define BLOCKM 16 /* tokens per call of the threaded kernel (tables in memory) */
#define PREFETCH 2048 /* bytes ahead of the code stream prefetched into L1 (the scales: a quarter of it) */

enum { ISA_NONE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

#define T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define T256 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

int llm1bit_abi_version(void) { return 3; }

int llm1bit_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("fma"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
    return ISA_NONE;
}

typedef struct {
    int32_t mode, q, k, kp, n, groups, nrb;
    int32_t indexed; /* mode 0: 1 = alpha_index holds the scales (uint16 into alpha), 0 = alpha holds them */
    const uint8_t *codes;
    const float *alpha;
    const int32_t *rows;
    const int32_t *group_rb;
    const uint16_t *alpha_index;
} lut_layer;

/* mode 0: the scale of entry e of the (groups, C, q, RT, 4) grid */
static inline float scale_at(const lut_layer *L, size_t e) {
    return L->indexed ? L->alpha[L->alpha_index[e]] : L->alpha[e];
}

/* floats per token in one table set: 4 kp (AVX-512, 16 per 4 columns) >= 3 kp (AVX2, 24 per 8 columns) */
static inline size_t table_floats(int kp) { return (size_t)4 * kp; }

/* ---------------------------------------------------------------- tables */

T512 static void tables512(const float *v, int kp, float *tab) {
    /* lane m of table g: sum_i (bit i of m ? +v[4g+i] : -v[4g+i]), summed i = 0, 1, 2, 3 */
    const __m512 s0 = _mm512_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
    const __m512 s1 = _mm512_setr_ps(-1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1);
    const __m512 s2 = _mm512_setr_ps(-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1);
    const __m512 s3 = _mm512_setr_ps(-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1);
    for (int g = 0; g < kp / 4; g++) {
        const float *u = v + 4 * g;
        __m512 t = _mm512_mul_ps(_mm512_set1_ps(u[0]), s0);
        t = _mm512_fmadd_ps(_mm512_set1_ps(u[1]), s1, t); /* exact product (+-1): one rounding, an add */
        t = _mm512_fmadd_ps(_mm512_set1_ps(u[2]), s2, t);
        t = _mm512_fmadd_ps(_mm512_set1_ps(u[3]), s3, t);
        _mm512_storeu_ps(tab + 16 * g, t);
    }
}

T256 static void tables256(const float *v, int kp, float *tab) {
    /* per code byte j: columns 0-2, 3-5 (8 entries each) and 6-7 (4 entries, repeated in lanes 4-7) */
    const __m256 s0 = _mm256_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1);
    const __m256 s1 = _mm256_setr_ps(-1, -1, 1, 1, -1, -1, 1, 1);
    const __m256 s2 = _mm256_setr_ps(-1, -1, -1, -1, 1, 1, 1, 1);
    for (int j = 0; j < kp / 8; j++) {
        const float *u = v + 8 * j;
        __m256 a = _mm256_mul_ps(_mm256_set1_ps(u[0]), s0);
        a = _mm256_fmadd_ps(_mm256_set1_ps(u[1]), s1, a);
        a = _mm256_fmadd_ps(_mm256_set1_ps(u[2]), s2, a);
        __m256 b = _mm256_mul_ps(_mm256_set1_ps(u[3]), s0);
        b = _mm256_fmadd_ps(_mm256_set1_ps(u[4]), s1, b);
        b = _mm256_fmadd_ps(_mm256_set1_ps(u[5]), s2, b);
        __m256 c = _mm256_mul_ps(_mm256_set1_ps(u[6]), s0);
        c = _mm256_fmadd_ps(_mm256_set1_ps(u[7]), s1, c);
        _mm256_storeu_ps(tab + 24 * j, a);
        _mm256_storeu_ps(tab + 24 * j + 8, b);
        _mm256_storeu_ps(tab + 24 * j + 16, c);
    }
}

static void build_tables(int isa, const float *v, int kp, float *tab) {
    if (isa == ISA_AVX512)
        tables512(v, kp, tab);
    else
        tables256(v, kp, tab);
}

/* ---------------------------------------------------------------- output scatter */

INLINE void scatter(const int32_t *rows, const float *lanes, int count, float *y) {
    for (int l = 0; l < count; l++) {
        int32_t row = rows[l];
        if (row >= 0) y[row] = lanes[l];
    }
}

/* ---------------------------------------------------------------- AVX-512 group kernel */

/* One group of RT tiles x M tokens. tabs: the table set of token 0 (tstride floats to the next token);
   mode 1 also steps bstride floats per plane. */
T512 INLINE void group512(const lut_layer *L, int g, const float *tabs, size_t tstride, size_t bstride,
                          const int M, const int mode, const int ix, float *y, int ldy) {
    __m512 acc[RT][MAXM];
    for (int r = 0; r < RT; r++)
        for (int t = 0; t < M; t++) acc[r][t] = _mm512_setzero_ps();
    const int C = L->kp / 32, q = L->q;
    const uint8_t *cp = L->codes + (size_t)g * C * q * RT * 64;
    const size_t e0 = (size_t)g * C * q * RT * 4;
    const float *ap = mode == 0 && !ix ? L->alpha + e0 : NULL;
    const uint16_t *ai = mode == 0 && ix ? L->alpha_index + e0 : NULL;
    for (int c = 0; c < C; c++) {
        for (int b = 0; b < q; b++) {
            const float *tc = tabs + (size_t)c * 128 + (mode == 1 ? (size_t)b * bstride : 0);
            /* the hardware prefetcher alone leaves a core waiting on DRAM (measured: 1.5 -> 1.14 ms at
               4096 x 11008, 3 bits, 2 threads); prefetching past the end of the array is harmless */
            for (int r = 0; r < RT; r++) _mm_prefetch((const char *)cp + PREFETCH + 64 * r, _MM_HINT_T0);
            if (mode == 0 && !ix) _mm_prefetch((const char *)ap + PREFETCH / 4, _MM_HINT_T0);
            if (mode == 0 && ix) _mm_prefetch((const char *)ai + PREFETCH / 8, _MM_HINT_T0);
            for (int r = 0; r < RT; r++, cp += 64) {
                /* a load at byte offset i puts code byte i of each row in bits 0-7 of its lane (vpermps
                   reads bits 0-3: the low nibble); shifting it by 4 gives the high nibble. Loads are cheap,
                   shifts share the vector ports with the lookups. (The last unit reads 3 bytes past its
                   end: the codes array carries 64 bytes of padding.) */
                const __m512i w0 = _mm512_loadu_si512((const void *)cp);
                const __m512i w2 = _mm512_loadu_si512((const void *)(cp + 1));
                const __m512i w4 = _mm512_loadu_si512((const void *)(cp + 2));
                const __m512i w6 = _mm512_loadu_si512((const void *)(cp + 3));
                const __m512i w1 = _mm512_srli_epi32(w0, 4), w3 = _mm512_srli_epi32(w2, 4);
                const __m512i w5 = _mm512_srli_epi32(w4, 4), w7 = _mm512_srli_epi32(w6, 4);
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                if (mode == 0) {
                    const float *al = L->alpha;
                    a0 = _mm512_set1_ps(ix ? al[ai[0]] : ap[0]);
                    a1 = _mm512_set1_ps(ix ? al[ai[1]] : ap[1]);
                    a2 = _mm512_set1_ps(ix ? al[ai[2]] : ap[2]);
                    a3 = _mm512_set1_ps(ix ? al[ai[3]] : ap[3]);
                }
                for (int t = 0; t < M; t++) {
                    const float *tt = tc + t * tstride;
                    __m512 p0 = _mm512_add_ps(_mm512_permutexvar_ps(w0, _mm512_loadu_ps(tt)),
                                              _mm512_permutexvar_ps(w1, _mm512_loadu_ps(tt + 16)));
                    __m512 p1 = _mm512_add_ps(_mm512_permutexvar_ps(w2, _mm512_loadu_ps(tt + 32)),
                                              _mm512_permutexvar_ps(w3, _mm512_loadu_ps(tt + 48)));
                    __m512 p2 = _mm512_add_ps(_mm512_permutexvar_ps(w4, _mm512_loadu_ps(tt + 64)),
                                              _mm512_permutexvar_ps(w5, _mm512_loadu_ps(tt + 80)));
                    __m512 p3 = _mm512_add_ps(_mm512_permutexvar_ps(w6, _mm512_loadu_ps(tt + 96)),
                                              _mm512_permutexvar_ps(w7, _mm512_loadu_ps(tt + 112)));
                    if (mode == 0) {
                        __m512 a = acc[r][t];
                        a = _mm512_fmadd_ps(a0, p0, a);
                        a = _mm512_fmadd_ps(a1, p1, a);
                        a = _mm512_fmadd_ps(a2, p2, a);
                        a = _mm512_fmadd_ps(a3, p3, a);
                        acc[r][t] = a;
                    } else {
                        acc[r][t] = _mm512_add_ps(
                            acc[r][t], _mm512_add_ps(_mm512_add_ps(p0, p1), _mm512_add_ps(p2, p3)));
                    }
                }
                if (mode == 0 && !ix) ap += 4;
                if (mode == 0 && ix) ai += 4;
            }
        }
    }
    const int32_t *rows = L->rows + (size_t)g * RT * TILE;
    float lanes[TILE];
    for (int r = 0; r < RT; r++)
        for (int t = 0; t < M; t++) {
            _mm512_storeu_ps(lanes, acc[r][t]);
            scatter(rows + r * TILE, lanes, TILE, y + (size_t)t * ldy);
        }
}

/* ---------------------------------------------------------------- AVX2 group kernel */

#define SRL(w, s) _mm256_srli_epi32(w, s)
#define LOOK(tab, idx) _mm256_permutevar8x32_ps(_mm256_loadu_ps(tab), idx)

/* AVX2 has 16 registers: one half tile (8 rows) at a time, M accumulators live. */
T256 INLINE void group256(const lut_layer *L, int g, const float *tabs, size_t tstride, size_t bstride,
                          const int M, const int mode, const int ix, float *y, int ldy) {
    const int C = L->kp / 32, q = L->q;
    const uint8_t *cg = L->codes + (size_t)g * C * q * RT * 64;
    const size_t e0 = (size_t)g * C * q * RT * 4;
    const float *ag = mode == 0 && !ix ? L->alpha + e0 : NULL;
    const uint16_t *ig = mode == 0 && ix ? L->alpha_index + e0 : NULL;
    const int32_t *rows = L->rows + (size_t)g * RT * TILE;
    for (int r = 0; r < RT; r++)
        for (int h = 0; h < 2; h++) {
            __m256 acc[MAXM];
            for (int t = 0; t < M; t++) acc[t] = _mm256_setzero_ps();
            for (int c = 0; c < C; c++)
                for (int b = 0; b < q; b++) {
                    const size_t unit = ((size_t)c * q + b) * RT + r;
                    const __m256i w = _mm256_loadu_si256((const __m256i *)(cg + unit * 64 + h * 32));
                    const __m256i i0 = w, i1 = SRL(w, 3), i2 = SRL(w, 6);
                    const __m256i i3 = SRL(w, 8), i4 = SRL(w, 11), i5 = SRL(w, 14);
                    const __m256i i6 = SRL(w, 16), i7 = SRL(w, 19), i8 = SRL(w, 22);
                    const __m256i i9 = SRL(w, 24), i10 = SRL(w, 27), i11 = SRL(w, 30);
                    const float *tc = tabs + (size_t)c * 96 + (mode == 1 ? (size_t)b * bstride : 0);
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                    if (mode == 0) {
                        const float *al = L->alpha;
                        const uint16_t *ai = ix ? ig + unit * 4 : NULL;
                        const float *ap = ix ? NULL : ag + unit * 4;
                        a0 = _mm256_set1_ps(ix ? al[ai[0]] : ap[0]);
                        a1 = _mm256_set1_ps(ix ? al[ai[1]] : ap[1]);
                        a2 = _mm256_set1_ps(ix ? al[ai[2]] : ap[2]);
                        a3 = _mm256_set1_ps(ix ? al[ai[3]] : ap[3]);
                    }
                    for (int t = 0; t < M; t++) {
                        const float *tt = tc + t * tstride;
                        __m256 p0 = _mm256_add_ps(_mm256_add_ps(LOOK(tt, i0), LOOK(tt + 8, i1)), LOOK(tt + 16, i2));
                        __m256 p1 = _mm256_add_ps(_mm256_add_ps(LOOK(tt + 24, i3), LOOK(tt + 32, i4)),
                                                  LOOK(tt + 40, i5));
                        __m256 p2 = _mm256_add_ps(_mm256_add_ps(LOOK(tt + 48, i6), LOOK(tt + 56, i7)),
                                                  LOOK(tt + 64, i8));
                        __m256 p3 = _mm256_add_ps(_mm256_add_ps(LOOK(tt + 72, i9), LOOK(tt + 80, i10)),
                                                  LOOK(tt + 88, i11));
                        if (mode == 0) {
                            __m256 a = acc[t];
                            a = _mm256_fmadd_ps(a0, p0, a);
                            a = _mm256_fmadd_ps(a1, p1, a);
                            a = _mm256_fmadd_ps(a2, p2, a);
                            a = _mm256_fmadd_ps(a3, p3, a);
                            acc[t] = a;
                        } else {
                            acc[t] = _mm256_add_ps(acc[t],
                                                   _mm256_add_ps(_mm256_add_ps(p0, p1), _mm256_add_ps(p2, p3)));
                        }
                    }
                }
            float lanes[8];
            for (int t = 0; t < M; t++) {
                _mm256_storeu_ps(lanes, acc[t]);
                scatter(rows + r * TILE + h * 8, lanes, 8, y + (size_t)t * ldy);
            }
        }
}

/* ---------------------------------------------------------------- dispatch on (isa, mode, M) */

#define CASES(FN, MODE, IX)                                                          \
    switch (M) {                                                                     \
    case 1: FN(L, g, tabs, tstride, bstride, 1, MODE, IX, y, ldy); break;            \
    case 2: FN(L, g, tabs, tstride, bstride, 2, MODE, IX, y, ldy); break;            \
    case 3: FN(L, g, tabs, tstride, bstride, 3, MODE, IX, y, ldy); break;            \
    default: FN(L, g, tabs, tstride, bstride, 4, MODE, IX, y, ldy); break;           \
    }

T512 static void run512(const lut_layer *L, int g, const float *tabs, size_t tstride, size_t bstride, int M,
                        float *y, int ldy) {
    if (L->mode == 0 && L->indexed) {
        CASES(group512, 0, 1)
    } else if (L->mode == 0) {
        CASES(group512, 0, 0)
    } else {
        CASES(group512, 1, 0)
    }
}

T256 static void run256(const lut_layer *L, int g, const float *tabs, size_t tstride, size_t bstride, int M,
                        float *y, int ldy) {
    if (L->mode == 0 && L->indexed) {
        CASES(group256, 0, 1)
    } else if (L->mode == 0) {
        CASES(group256, 0, 0)
    } else {
        CASES(group256, 1, 0)
    }
}

/* ---------------------------------------------------------------- threads */

typedef struct {
    const lut_layer *L;
    int isa, chunk, m;
    int *next; /* shared: the first group not yet taken (threads take `chunk` groups at a time) */
    const float *xp;   /* (m, kp) padded activations */
    const float *tabs; /* mode 0: (m, table_floats) shared tables */
    float *y;
    int ldy;
    float *scratch; /* mode 1: q * m * table_floats + kp floats, this thread's own */
} task_t;

static void run_group(const task_t *T, int g, int *current_rb) {
    const lut_layer *L = T->L;
    const int kp = L->kp, q = L->q, m = T->m;
    const size_t ts = table_floats(kp);
    const float *tabs = T->tabs;
    size_t bstride = 0;
    if (L->mode == 1) {
        const int rb = L->group_rb[g];
        if (rb != *current_rb) { /* tables of alpha * x for this row block, every plane and token */
            float *v = T->scratch + (size_t)q * m * ts;
            for (int b = 0; b < q; b++) {
                const float *a = L->alpha + ((size_t)rb * q + b) * kp;
                for (int t = 0; t < m; t++) {
                    const float *x = T->xp + (size_t)t * kp;
                    for (int i = 0; i < kp; i++) v[i] = a[i] * x[i];
                    build_tables(T->isa, v, kp, T->scratch + ((size_t)b * m + t) * ts);
                }
            }
            *current_rb = rb;
        }
        tabs = T->scratch;
        bstride = (size_t)m * ts;
    }
    for (int t0 = 0; t0 < m; t0 += MAXM) {
        const int M = m - t0 < MAXM ? m - t0 : MAXM;
        float *y = T->y + (size_t)t0 * T->ldy;
        if (T->isa == ISA_AVX512)
            run512(L, g, tabs + (size_t)t0 * ts, ts, bstride, M, y, T->ldy);
        else
            run256(L, g, tabs + (size_t)t0 * ts, ts, bstride, M, y, T->ldy);
    }
}

static void run_task(const task_t *T) {
    const int groups = T->L->groups;
    int current_rb = -1;
    for (;;) {
        const int g0 = __atomic_fetch_add(T->next, T->chunk, __ATOMIC_RELAXED);
        if (g0 >= groups) break;
        const int g1 = g0 + T->chunk < groups ? g0 + T->chunk : groups;
        for (int g = g0; g < g1; g++) run_group(T, g, &current_rb);
    }
}

/* ---------------------------------------------------------------- helper threads

   A small pool of helper threads, started at first use and kept asleep on a condition variable between
   calls. The caller posts a job and works on it itself; a helper joins only while the job is open and takes
   work from the job's shared counter. The caller then closes the job and waits only for helpers that have
   joined (each finishing its current chunk), never for one the OS has not scheduled yet: on a busy machine
   (another process, or torch's own threads spinning on the other core) the caller just does more of the
   work. Concurrent callers: the first holds the pool, the others run alone. After fork() the child has no
   helpers and starts afresh. */

typedef struct {
    void (*fn)(void *ctx, int slot);
    void *ctx;
    int max_slots; /* participants allowed, the caller included (slot 0) */
    int joined;    /* slots handed out */
    int active;    /* helpers inside fn */
    int closed;
} pool_job;

static struct {
    pthread_mutex_t mu, run;
    pthread_cond_t wake, idle;
    pool_job *job;
    unsigned long gen;
    int helpers;
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
       PTHREAD_COND_INITIALIZER, NULL, 0, 0};
static pthread_once_t P_once = PTHREAD_ONCE_INIT;

/* how long a helper keeps polling for the next job before it sleeps: in a decode step the kernel's calls come
   tens to hundreds of microseconds apart, and a sleeping helper takes ~20 us (a VM) to wake. Off by default:
   on this 2-vCPU VM a polling helper made things slower, not faster (SmolLM2 lat3 decode 5.3 vs 10.2 tokens/s,
   8960 x 1536 at 2 threads 929 vs 750 us, both on a busy machine): it takes the core torch's own threads and
   the hypervisor want. $LLM1BIT_POOL_SPIN_US (read once) sets it, for machines where that is not so. */
#define POOL_SPIN_US_DEFAULT 0
static long pool_spin_ns = -1;

static void pool_after_fork(void) {
    pthread_mutex_init(&P.mu, NULL);
    pthread_mutex_init(&P.run, NULL);
    pthread_cond_init(&P.wake, NULL);
    pthread_cond_init(&P.idle, NULL);
    P.job = NULL;
    P.helpers = 0;
}

static void pool_init(void) {
    const char *env = getenv("LLM1BIT_POOL_SPIN_US");
    pool_spin_ns = 1000L * (env && *env ? atol(env) : POOL_SPIN_US_DEFAULT);
    pthread_atfork(NULL, NULL, pool_after_fork);
}

typedef struct {
    unsigned long seen;
} helper_arg;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* poll P.gen (without the lock) for up to pool_spin_ns; 1 if a new job was posted */
static int pool_spin(unsigned long seen) {
    const long spin_ns = __atomic_load_n(&pool_spin_ns, __ATOMIC_RELAXED);
    if (spin_ns <= 0) return 0;
    const long end = now_ns() + spin_ns;
    for (int i = 1;; i++) {
        if (__atomic_load_n(&P.gen, __ATOMIC_ACQUIRE) != seen) return 1;
        _mm_pause();
        if ((i & 63) == 0 && now_ns() > end) return 0;
    }
}

static void *pool_helper(void *arg) {
    unsigned long seen = ((helper_arg *)arg)->seen;
    free(arg);
    pthread_mutex_lock(&P.mu);
    for (;;) {
        if (P.gen == seen) { /* no job yet: poll for a while, then sleep */
            pthread_mutex_unlock(&P.mu);
            pool_spin(seen);
            pthread_mutex_lock(&P.mu);
        }
        while (P.job == NULL || P.gen == seen) pthread_cond_wait(&P.wake, &P.mu);
        seen = P.gen;
        pool_job *J = P.job;
        if (J->closed || J->joined >= J->max_slots) continue;
        const int slot = J->joined++;
        __atomic_add_fetch(&J->active, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&P.mu);
        J->fn(J->ctx, slot);
        pthread_mutex_lock(&P.mu);
        if (__atomic_sub_fetch(&J->active, 1, __ATOMIC_RELEASE) == 0) pthread_cond_broadcast(&P.idle);
    }
    return NULL;
}

/* fn(ctx, slot) on the caller (slot 0) and on up to threads - 1 helpers; returns when all who joined are done */
static void pool_run(void (*fn)(void *, int), void *ctx, int threads) {
    pool_job J = {fn, ctx, threads, 1, 0, 0};
    pthread_once(&P_once, pool_init);
    const int pooled = threads > 1 && pthread_mutex_trylock(&P.run) == 0;
    if (pooled) {
        pthread_mutex_lock(&P.mu);
        while (P.helpers < threads - 1) {
            helper_arg *arg = (helper_arg *)malloc(sizeof(helper_arg));
            pthread_t id;
            pthread_attr_t attr;
            if (!arg) break;
            arg->seen = P.gen; /* it will take the job posted next */
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            const int rc = pthread_create(&id, &attr, pool_helper, arg);
            pthread_attr_destroy(&attr);
            if (rc != 0) {
                free(arg);
                break;
            }
            P.helpers++;
        }
        P.job = &J;
        __atomic_store_n(&P.gen, P.gen + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&P.wake);
        pthread_mutex_unlock(&P.mu);
    }
    fn(ctx, 0);
    if (pooled) {
        pthread_mutex_lock(&P.mu);
        J.closed = 1;
        pthread_mutex_unlock(&P.mu);
        /* a joined helper is finishing its last chunk: spin (sleeping and being woken again costs tens of
           microseconds in a VM), then sleep if it takes long */
        for (long spin = 0; spin < 200000 && __atomic_load_n(&J.active, __ATOMIC_ACQUIRE) > 0; spin++)
            _mm_pause();
        pthread_mutex_lock(&P.mu);
        while (__atomic_load_n(&J.active, __ATOMIC_ACQUIRE) > 0) pthread_cond_wait(&P.idle, &P.mu);
        P.job = NULL;
        pthread_mutex_unlock(&P.mu);
        pthread_mutex_unlock(&P.run);
    }
}

typedef struct {
    task_t task;    /* template: everything but the scratch */
    float *scratch; /* mode 1: one slice per slot */
    size_t per_slot;
} gemm_job;

static void gemm_slot(void *ctx, int slot) {
    gemm_job *G = (gemm_job *)ctx;
    task_t T = G->task;
    T.scratch = G->scratch ? G->scratch + (size_t)slot * G->per_slot : NULL;
    run_task(&T);
}

static float *alloc_floats(size_t count) {
    void *p = NULL;
    if (posix_memalign(&p, 64, (count ? count : 1) * sizeof(float))) return NULL;
    return (float *)p;
}

/* y[t, :] = x[t, :] W^T for t < m; x (m, k) with row stride ldx, y (m, n) with row stride ldy.
   Returns 0, or -1 (unknown isa), -2 (out of memory). */
int llm1bit_lut_gemm(const lut_layer *L, const float *x, int ldx, float *y, int ldy, int m, int threads,
                     int isa) {
    if (isa != ISA_AVX512 && isa != ISA_AVX2) return -1;
    if (isa > llm1bit_isa()) return -1;
    const int kp = L->kp, q = L->q;
    const size_t ts = table_floats(kp);
    if (threads < 1) threads = 1;
    if (threads > L->groups) threads = L->groups > 0 ? L->groups : 1;
    if (threads > 64) threads = 64;
    const int bm = m < BLOCKM ? m : BLOCKM;
    const size_t per_slot = (size_t)q * bm * ts + kp;
    float *xp = alloc_floats((size_t)bm * kp);
    float *tabs = L->mode == 0 ? alloc_floats((size_t)bm * ts) : NULL;
    float *scratch = L->mode == 1 ? alloc_floats((size_t)threads * per_slot) : NULL;
    if (!xp || (L->mode == 0 && !tabs) || (L->mode == 1 && !scratch)) {
        free(xp);
        free(tabs);
        free(scratch);
        return -2;
    }
    /* about 8 chunks per thread: a thread the OS holds back leaves its share to the others */
    int chunk = L->groups / (8 * threads);
    if (chunk < 1) chunk = 1;
    for (int t0 = 0; t0 < m; t0 += BLOCKM) {
        const int mb = m - t0 < BLOCKM ? m - t0 : BLOCKM;
        for (int t = 0; t < mb; t++) {
            memcpy(xp + (size_t)t * kp, x + (size_t)(t0 + t) * ldx, sizeof(float) * L->k);
            memset(xp + (size_t)t * kp + L->k, 0, sizeof(float) * (kp - L->k));
            if (L->mode == 0) build_tables(isa, xp + (size_t)t * kp, kp, tabs + (size_t)t * ts);
        }
        int next = 0;
        gemm_job G = {{L, isa, chunk, mb, &next, xp, tabs, y + (size_t)t0 * ldy, ldy, NULL}, scratch, per_slot};
        pool_run(gemm_slot, &G, threads);
    }
    free(xp);
    free(tabs);
    free(scratch);
    return 0;
}

/* ---------------------------------------------------------------- dense rebuild (large batches) */

/* W (n, k), row stride ldw, rebuilt from the layout: W[row, col] = sum_b alpha_b * (+-1), planes summed in
   order b = 0, 1, ... in fp32, then stored as fp32 (out_bf16 = 0) or rounded to bfloat16 (to nearest, ties to
   even, as torch's cast). For calls of many rows (prefill), where one dense matmul beats per-row lookups; the
   caller drops W after the call. Every element of W is written once (no zeroing needed). */
static float SIGNS[256][8];
static pthread_once_t SIGNS_once = PTHREAD_ONCE_INIT;
static void signs_init(void) {
    for (int v = 0; v < 256; v++)
        for (int t = 0; t < 8; t++) SIGNS[v][t] = (v >> t) & 1 ? 1.0f : -1.0f;
}

typedef struct {
    const lut_layer *L;
    void *w;
    int ldw, out_bf16;
    int *next;
} dequant_job;

static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return (uint16_t)((u >> 16) | ((u & 0xffff) ? 0x40 : 0)); /* inf/nan */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

T256 static void dequant_group(const lut_layer *L, int g, void *w, int ldw, int out_bf16) {
    const int C = L->kp / 32, q = L->q, k = L->k;
    const uint8_t *cg = L->codes + (size_t)g * C * q * RT * 64;
    const int32_t *rows = L->rows + (size_t)g * RT * TILE;
    for (int c = 0; c < C; c++)
        for (int r = 0; r < RT; r++)
            for (int lane = 0; lane < TILE; lane++) {
                const int32_t row = rows[r * TILE + lane];
                if (row < 0) continue;
                for (int byte = 0; byte < 4; byte++) {
                    const int col0 = 32 * c + 8 * byte;
                    if (col0 >= k) break;
                    __m256 acc = _mm256_setzero_ps();
                    for (int b = 0; b < q; b++) {
                        const uint8_t v = cg[(((size_t)c * q + b) * RT + r) * 64 + lane * 4 + byte];
                        const __m256 s = _mm256_loadu_ps(SIGNS[v]);
                        __m256 a;
                        if (L->mode == 0)
                            a = _mm256_set1_ps(scale_at(L, ((((size_t)g * C + c) * q + b) * RT + r) * 4 + byte));
                        else
                            a = _mm256_loadu_ps(L->alpha + ((size_t)L->group_rb[g] * q + b) * L->kp + col0);
                        acc = _mm256_add_ps(acc, _mm256_mul_ps(s, a)); /* +-a exactly, then one rounding */
                    }
                    float vals[8];
                    const int cols = k - col0 < 8 ? k - col0 : 8;
                    if (out_bf16) {
                        uint16_t *wr = (uint16_t *)w + (size_t)row * ldw + col0;
                        if (cols == 8) { /* round to nearest even: + 0x7fff + lsb, keep the high half (finite) */
                            __m256i u = _mm256_castps_si256(acc);
                            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
                            u = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
                            const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(u, u), 0x08);
                            _mm_storeu_si128((__m128i *)wr, _mm256_castsi256_si128(packed));
                        } else {
                            _mm256_storeu_ps(vals, acc);
                            for (int t = 0; t < cols; t++) wr[t] = to_bf16(vals[t]);
                        }
                    } else {
                        _mm256_storeu_ps(vals, acc);
                        float *wr = (float *)w + (size_t)row * ldw + col0;
                        if (cols == 8)
                            _mm256_storeu_ps(wr, acc);
                        else
                            for (int t = 0; t < cols; t++) wr[t] = vals[t];
                    }
                }
            }
}

static void dequant_slot(void *ctx, int slot) {
    (void)slot;
    dequant_job *J = (dequant_job *)ctx;
    for (;;) {
        const int g = __atomic_fetch_add(J->next, 1, __ATOMIC_RELAXED);
        if (g >= J->L->groups) break;
        dequant_group(J->L, g, J->w, J->ldw, J->out_bf16);
    }
}

/* w: n rows of ldw elements, float32 (out_bf16 = 0) or bfloat16 (1). Returns 0, or -1 without AVX2. */
int llm1bit_lut_dequant(const lut_layer *L, void *w, int ldw, int out_bf16, int threads) {
    if (llm1bit_isa() < ISA_AVX2) return -1;
    pthread_once(&SIGNS_once, signs_init);
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    int next = 0;
    dequant_job J = {L, w, ldw, out_bf16, &next};
    pool_run(dequant_slot, &J, threads);
    return 0;
}

/* ---------------------------------------------------------------- bf16 activations in and out

   The same computation for a bf16 x and a bf16 y (a model running in bf16): x widened to fp32 (exact), the
   fp32 result plus the fp32 bias (if any) rounded once to bf16 (to nearest even, NaN to 0x7fc0), as
   `y = kernel(x.float()); y += bias.float(); y.to(bfloat16)` does in torch, without the three small torch
   calls (~15 us a call on this machine: a decode step makes hundreds). */
/* y (m, n) bf16, row stride ldy = bf16(yf + bias) (yf (m, n) fp32; bias NULL: none; NaN to 0x7fc0) */
static void store_bf16(const float *yf, const float *bias, int m, int n, uint16_t *y, int ldy) {
    for (int t = 0; t < m; t++)
        for (int r = 0; r < n; r++) {
            float v = yf[(size_t)t * n + r];
            if (bias) v = v + bias[r];
            y[(size_t)t * ldy + r] = v != v ? (uint16_t)0x7fc0 : to_bf16(v);
        }
}

int llm1bit_lut_gemm_bf16(const lut_layer *L, const uint16_t *x, int ldx, uint16_t *y, int ldy, const float *bias,
                          int m, int threads, int isa) {
    const int k = L->k, n = L->n;
    float *xf = alloc_floats((size_t)m * k);
    float *yf = alloc_floats((size_t)m * n);
    if (!xf || !yf) {
        free(xf);
        free(yf);
        return -2;
    }
    for (int t = 0; t < m; t++)
        for (int i = 0; i < k; i++) {
            const uint32_t u = (uint32_t)x[(size_t)t * ldx + i] << 16;
            memcpy(xf + (size_t)t * k + i, &u, 4);
        }
    const int rc = llm1bit_lut_gemm(L, xf, k, yf, n, m, threads, isa);
    if (rc == 0) store_bf16(yf, bias, m, n, y, ldy);
    free(xf);
    free(yf);
    return rc;
}

/* ---------------------------------------------------------------- several layers, one input

   y = x [W_0; W_1; ...]^T for up to MAXLAYERS mode-0 layers that read the same x (q/k/v, gate/up in decode):
   x converted and its tables built once, one pool job over the groups of every layer (a layer too small to
   be worth a thread alone shares one with the others), the outputs side by side in one bf16 row per token
   (layer j's at column offset n_0 + ... + n_{j-1}), the fp32 bias of all layers concatenated (or NULL).
   Each row is computed exactly as `llm1bit_lut_gemm_bf16` computes it for its layer alone (same tables, same
   order of operations): the same bits. Returns 0, -1 (unknown isa, a layer not mode 0, layers of different
   k, too many layers, m outside 1..BLOCKM), -2 (out of memory). */
#define MAXLAYERS 8

typedef struct {
    task_t tasks[MAXLAYERS];
    int starts[MAXLAYERS + 1]; /* first global group of each layer */
    int count, chunk;
    int *next;
} multi_job;

static void multi_slot(void *ctx, int slot) {
    (void)slot;
    const multi_job *J = (const multi_job *)ctx;
    const int total = J->starts[J->count];
    int current_rb = -1, j = 0;
    for (;;) {
        const int g0 = __atomic_fetch_add(J->next, J->chunk, __ATOMIC_RELAXED);
        if (g0 >= total) break;
        const int g1 = g0 + J->chunk < total ? g0 + J->chunk : total;
        for (int g = g0; g < g1; g++) {
            while (g >= J->starts[j + 1]) j++;
            while (g < J->starts[j]) j--;
            run_group(&J->tasks[j], g - J->starts[j], &current_rb);
        }
    }
}

int llm1bit_lut_gemm_bf16_multi(const lut_layer *const *Ls, int count, const uint16_t *x, int ldx, uint16_t *y,
                                int ldy, const float *bias, int m, int threads, int isa) {
    if (isa != ISA_AVX512 && isa != ISA_AVX2) return -1;
    if (isa > llm1bit_isa()) return -1;
    if (count < 1 || count > MAXLAYERS || m < 1 || m > BLOCKM) return -1;
    const int k = Ls[0]->k, kp = Ls[0]->kp;
    int ntot = 0, groups = 0;
    for (int j = 0; j < count; j++) {
        if (Ls[j]->mode != 0 || Ls[j]->k != k || Ls[j]->kp != kp) return -1;
        ntot += Ls[j]->n;
        groups += Ls[j]->groups;
    }
    const size_t ts = table_floats(kp);
    float *xp = alloc_floats((size_t)m * kp);
    float *tabs = alloc_floats((size_t)m * ts);
    float *yf = alloc_floats((size_t)m * ntot);
    if (!xp || !tabs || !yf) {
        free(xp);
        free(tabs);
        free(yf);
        return -2;
    }
    for (int t = 0; t < m; t++) {
        float *row = xp + (size_t)t * kp;
        for (int i = 0; i < k; i++) {
            const uint32_t u = (uint32_t)x[(size_t)t * ldx + i] << 16;
            memcpy(row + i, &u, 4);
        }
        memset(row + k, 0, sizeof(float) * (kp - k));
        build_tables(isa, row, kp, tabs + (size_t)t * ts);
    }
    if (threads < 1) threads = 1;
    if (threads > groups) threads = groups > 0 ? groups : 1;
    if (threads > 64) threads = 64;
    int next = 0, chunk = groups / (8 * threads);
    multi_job J;
    J.count = count;
    J.chunk = chunk < 1 ? 1 : chunk;
    J.next = &next;
    J.starts[0] = 0;
    for (int j = 0, off = 0; j < count; j++) {
        task_t T = {Ls[j], isa, J.chunk, m, &next, xp, tabs, yf + off, ntot, NULL};
        J.tasks[j] = T;
        J.starts[j + 1] = J.starts[j] + Ls[j]->groups;
        off += Ls[j]->n;
    }
    pool_run(multi_slot, &J, threads);
    store_bf16(yf, bias, m, ntot, y, ldy);
    free(xp);
    free(tabs);
    free(yf);
    return 0;
}

/* ---------------------------------------------------------------- bf16 GEMV (unquantized linears)

   y[r] = sum_i x[i] * W[r, i] for one bf16 row x and a bf16 weight W (n, k), row stride ldw, y fp32: the
   unquantized linears of a quantized model (lm_head above all) in decode, where torch's bf16 GEMV reads W
   at half the memory bandwidth. Products of two bf16 values are exact in fp32; they are summed in fp32
   (per lane, then the lanes), so the result is an fp32 dot product of the bf16 inputs. Four rows at a time
   share the loads of x; threads take chunks of rows from a shared counter (pool_run).
   Paths: AVX512-BF16 (`vdpbf16ps`: two products per lane added to the accumulator in fp32, denormal inputs
   and outputs flushed to zero), AVX-512F and AVX2 (bf16 widened to fp32 by a shift, one fma per product). */

enum { BF16_AVX2 = 1, BF16_AVX512 = 2, BF16_AVX512BF16 = 3 };
#define T512BF __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")))
#ifndef BF16_ROWS
#define BF16_ROWS 4
#endif
#ifndef BF16_CHUNK
#define BF16_CHUNK 64 /* rows per chunk a thread takes */
#endif
#ifndef BF16_AHEAD
#define BF16_AHEAD 4096 /* bytes ahead of each row's stream prefetched (measured: 1024 -> 4096 gains 10%) */
#endif

int llm1bit_bf16_isa(void) {
    const int isa = llm1bit_isa();
    __builtin_cpu_init();
    if (isa == ISA_AVX512 && __builtin_cpu_supports("avx512bf16")) return BF16_AVX512BF16;
    return isa == ISA_AVX512 ? BF16_AVX512 : isa == ISA_AVX2 ? BF16_AVX2 : 0;
}

T512BF static void bf16_rows_dp(const uint16_t *w, size_t ldw, int rows, const uint16_t *x, int k, float *y) {
    __m512 acc[BF16_ROWS];
    for (int r = 0; r < BF16_ROWS; r++) acc[r] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= k; i += 32) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + i));
        for (int r = 0; r < BF16_ROWS; r++) {
            if (r >= rows) break;
            const uint16_t *wr = w + (size_t)r * ldw + i;
            _mm_prefetch((const char *)wr + BF16_AHEAD, _MM_HINT_T0);
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512((const void *)wr), xv);
        }
    }
    if (i < k) {
        const __mmask32 mask = (__mmask32)((1ull << (k - i)) - 1);
        const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + i);
        for (int r = 0; r < rows; r++)
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_maskz_loadu_epi16(mask, w + (size_t)r * ldw + i), xv);
    }
    for (int r = 0; r < rows; r++) y[r] = _mm512_reduce_add_ps(acc[r]);
}

T512 static inline __m512 widen512(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

T512 static void bf16_rows_512(const uint16_t *w, size_t ldw, int rows, const uint16_t *x, int k, float *y) {
    __m512 acc[BF16_ROWS];
    for (int r = 0; r < BF16_ROWS; r++) acc[r] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= k; i += 16) {
        const __m512 xv = widen512(_mm256_loadu_si256((const __m256i *)(x + i)));
        for (int r = 0; r < BF16_ROWS; r++) {
            if (r >= rows) break;
            const uint16_t *wr = w + (size_t)r * ldw + i;
            if ((i & 31) == 0) _mm_prefetch((const char *)wr + BF16_AHEAD, _MM_HINT_T0);
            acc[r] = _mm512_fmadd_ps(widen512(_mm256_loadu_si256((const __m256i *)wr)), xv, acc[r]);
        }
    }
    if (i < k) {
        const __mmask16 mask = (__mmask16)((1u << (k - i)) - 1);
        const __m512 xv = widen512(_mm256_maskz_loadu_epi16(mask, x + i));
        for (int r = 0; r < rows; r++)
            acc[r] = _mm512_fmadd_ps(widen512(_mm256_maskz_loadu_epi16(mask, w + (size_t)r * ldw + i)), xv, acc[r]);
    }
    for (int r = 0; r < rows; r++) y[r] = _mm512_reduce_add_ps(acc[r]);
}

T256 static inline __m256 widen256(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }

T256 static void bf16_rows_256(const uint16_t *w, size_t ldw, int rows, const uint16_t *x, int k, float *y) {
    __m256 acc[BF16_ROWS];
    for (int r = 0; r < BF16_ROWS; r++) acc[r] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= k; i += 8) {
        const __m256 xv = widen256(_mm_loadu_si128((const __m128i *)(x + i)));
        for (int r = 0; r < BF16_ROWS; r++) {
            if (r >= rows) break;
            const uint16_t *wr = w + (size_t)r * ldw + i;
            if ((i & 31) == 0) _mm_prefetch((const char *)wr + BF16_AHEAD, _MM_HINT_T0);
            acc[r] = _mm256_fmadd_ps(widen256(_mm_loadu_si128((const __m128i *)wr)), xv, acc[r]);
        }
    }
    float lanes[8];
    for (int r = 0; r < rows; r++) {
        _mm256_storeu_ps(lanes, acc[r]);
        float t = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        const uint16_t *wr = w + (size_t)r * ldw;
        for (int j = i; j < k; j++) { /* tail: the same products, exact in fp32 */
            uint32_t a = (uint32_t)wr[j] << 16, b = (uint32_t)x[j] << 16;
            float fa, fb;
            memcpy(&fa, &a, 4);
            memcpy(&fb, &b, 4);
            t += fa * fb;
        }
        y[r] = t;
    }
}

typedef struct {
    const uint16_t *w, *x;
    size_t ldw;
    int n, k, isa;
    float *y;
    int *next;
} bf16_job;

static void bf16_slot(void *ctx, int slot) {
    (void)slot;
    bf16_job *J = (bf16_job *)ctx;
    for (;;) {
        const int r0 = __atomic_fetch_add(J->next, BF16_CHUNK, __ATOMIC_RELAXED);
        if (r0 >= J->n) break;
        const int r1 = r0 + BF16_CHUNK < J->n ? r0 + BF16_CHUNK : J->n;
        for (int r = r0; r < r1; r += BF16_ROWS) {
            const int rows = r1 - r < BF16_ROWS ? r1 - r : BF16_ROWS;
            const uint16_t *w = J->w + (size_t)r * J->ldw;
            if (J->isa == BF16_AVX512BF16)
                bf16_rows_dp(w, J->ldw, rows, J->x, J->k, J->y + r);
            else if (J->isa == BF16_AVX512)
                bf16_rows_512(w, J->ldw, rows, J->x, J->k, J->y + r);
            else
                bf16_rows_256(w, J->ldw, rows, J->x, J->k, J->y + r);
        }
    }
}

/* y (n) fp32 = W (n, k) bf16, row stride ldw, times x (k) bf16. isa: 1 avx2, 2 avx512f, 3 avx512bf16.
   Returns 0, or -1 (an isa this CPU lacks). */
int llm1bit_bf16_gemv(const uint16_t *w, int n, int k, int ldw, const uint16_t *x, float *y, int threads, int isa) {
    if (isa < BF16_AVX2 || isa > llm1bit_bf16_isa()) return -1;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    const int chunks = (n + BF16_CHUNK - 1) / BF16_CHUNK;
    if (threads > chunks) threads = chunks > 0 ? chunks : 1;
    int next = 0;
    bf16_job J = {w, x, (size_t)ldw, n, k, isa, y, &next};
    pool_run(bf16_slot, &J, threads);
    return 0;
}

/* ---------------------------------------------------------------- acc rotations */

/* The signed Hadamard network of llm1bit/quant/incoherence.py (procedure 2), applied in float64 with the
   same operations in the same order as SignedHadamard.apply / apply_t, to each of m vectors (x: (m, n),
   row stride ldx, in place): the same bits as numpy. perms int32 (stages, n); flips uint8 (stages, n) is 1
   where the element taken at position i of stage t is negated (negative[t, perms[t, i]]). A flip toggles the
   sign bit: exact, as numpy's multiplication by -1.0, and free of branches on random signs (measured: a
   branch made the 11008-element M^T 4x slower). */
static const double HALF_SQRT = 0.70710678118654757; /* sqrt(0.5) correctly rounded, as numpy's math.sqrt */

static inline double flip_sign(double v, uint8_t flip) {
    uint64_t u;
    memcpy(&u, &v, 8);
    u ^= (uint64_t)flip << 63;
    memcpy(&v, &u, 8);
    return v;
}

static void hadamard_one(const int32_t *perms, const uint8_t *flips, int stages, int n, int transpose, double *x,
                         double *tmp) {
    const int h = n - n % 2;
    double *src = x, *dst = tmp;
    for (int s = 0; s < stages; s++) {
        const int t = transpose ? stages - 1 - s : s;
        const int32_t *p = perms + (size_t)t * n;
        const uint8_t *f = flips + (size_t)t * n;
        if (!transpose) {
            for (int i = 0; i < h; i += 2) {
                const double a = flip_sign(src[p[i]], f[i]);
                const double b = flip_sign(src[p[i + 1]], f[i + 1]);
                dst[i] = (a + b) * HALF_SQRT;
                dst[i + 1] = (a - b) * HALF_SQRT;
            }
            if (h < n) dst[h] = flip_sign(src[p[h]], f[h]);
        } else {
            for (int i = 0; i < h; i += 2) {
                const double a = src[i], b = src[i + 1];
                dst[p[i]] = flip_sign((a + b) * HALF_SQRT, f[i]);
                dst[p[i + 1]] = flip_sign((a - b) * HALF_SQRT, f[i + 1]);
            }
            if (h < n) dst[p[h]] = flip_sign(src[h], f[h]);
        }
        double *swap = src;
        src = dst;
        dst = swap;
    }
    if (src != x) memcpy(x, src, sizeof(double) * n);
}

int llm1bit_hadamard(const int32_t *perms, const uint8_t *flips, int stages, int n, int transpose, double *x,
                     int ldx, int m) {
    double *tmp = (double *)malloc(sizeof(double) * (n ? n : 1));
    if (!tmp) return -2;
    for (int t = 0; t < m; t++) hadamard_one(perms, flips, stages, n, transpose, x + (size_t)t * ldx, tmp);
    free(tmp);
    return 0;
}

/* ---------------------------------------------------------------- streaming read (benchmark reference) */

typedef struct {
    const float *p;
    size_t n;
    float sum;
} stream_t;

T512 static void *stream512(void *arg) {
    stream_t *s = (stream_t *)arg;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= s->n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(s->p + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(s->p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(s->p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(s->p + i + 48));
    }
    float t = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < s->n; i++) t += s->p[i];
    s->sum = t;
    return NULL;
}

static void *stream_plain(void *arg) {
    stream_t *s = (stream_t *)arg;
    float t = 0;
    for (size_t i = 0; i < s->n; i++) t += s->p[i];
    s->sum = t;
    return NULL;
}

/* Sum of n floats read once by `threads` threads (contiguous shares): what streaming from memory costs. */
float llm1bit_stream_read(const float *p, size_t n, int threads) {
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    stream_t parts[64];
    pthread_t ids[64];
    int started[64] = {0};
    void *(*fn)(void *) = llm1bit_isa() == ISA_AVX512 ? stream512 : stream_plain;
    for (int i = 0; i < threads; i++) {
        size_t a = n * i / threads, b = n * (i + 1) / threads;
        parts[i] = (stream_t){p + a, b - a, 0};
    }
    for (int i = 1; i < threads; i++) started[i] = pthread_create(&ids[i], NULL, fn, &parts[i]) == 0;
    fn(&parts[0]);
    float total = parts[0].sum;
    for (int i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(ids[i], NULL);
        else
            fn(&parts[i]);
        total += parts[i].sum;
    }
    return total;
}

/* ---------------------------------------------------------------- one decode step's glue (bf16)

   What a Llama-family decoder layer does between its projections, for one token, in C: the lean decode step
   (llm1bit/quant/eval/lean_decode.py) calls these instead of ~25 small torch ops a layer (each ~3-7 us on this
   machine, as much as the layer's kernels). bf16 is rounded where transformers rounds: every product or sum
   that torch computes as its own bf16 op is rounded to bf16 here too (to nearest even); reductions (the
   norm's mean of squares, attention) are fp32, in another order than torch's. */

static inline float from_bf16(uint16_t v) {
    const uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float round_bf16(float f) { return from_bf16(to_bf16(f)); }

/* h += d (bf16, rounded once; d NULL: no add), then out = w * bf16(h * rsqrt(mean(h^2) + eps)) (RMSNorm:
   mean in fp32, the normalised row rounded to bf16, times the bf16 weight rounded again) */
T256 int llm1bit_add_rmsnorm_bf16(uint16_t *h, const uint16_t *d, const uint16_t *w, float eps, int n,
                                  uint16_t *out) {
    float acc[16] = {0};
    int i = 0;
    if (d)
        for (int j = 0; j < n; j++) h[j] = to_bf16(from_bf16(h[j]) + from_bf16(d[j]));
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            const float v = from_bf16(h[i + j]);
            acc[j] += v * v;
        }
    float ss = 0;
    for (int j = 0; j < 16; j++) ss += acc[j];
    for (; i < n; i++) ss += from_bf16(h[i]) * from_bf16(h[i]);
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int j = 0; j < n; j++) out[j] = to_bf16(from_bf16(w[j]) * round_bf16(from_bf16(h[j]) * r));
    return 0;
}

/* out = bf16(bf16(silu(gate)) * up), gate = gu[0:ffn], up = gu[ffn:2 ffn] (transformers: act(gate) * up) */
int llm1bit_silu_mul_bf16(const uint16_t *gu, int ffn, uint16_t *out) {
    for (int j = 0; j < ffn; j++) {
        const float g = from_bf16(gu[j]);
        out[j] = to_bf16(round_bf16(g / (1.0f + expf(-g))) * from_bf16(gu[ffn + j]));
    }
    return 0;
}

/* One token of attention at position `pos`: qkv = [q (heads x dim) | k (kv x dim) | v (kv x dim)] bf16;
   q and k rotated (x * cos + roll(x, dim / 2) * sin_signed, each product and the sum rounded to bf16, as
   transformers' apply_rotary_pos_emb; sin_signed = sin with its first half negated); k and v written into
   the layer's caches (kv, cache_len, dim) at pos; each query head h (sharing key/value head h / (heads / kv))
   attends over positions 0..pos: scores (q . k) * scaling in fp32, softmax in fp32, the weighted sum of
   values in fp32, rounded to bf16 into out (heads x dim). */
T256 int llm1bit_attn_decode_bf16(const uint16_t *qkv, const uint16_t *cos, const uint16_t *sin_signed,
                                  uint16_t *k_cache, uint16_t *v_cache, int cache_len, int pos, int heads, int kv,
                                  int dim, float scaling, uint16_t *out) {
    if (pos < 0 || pos >= cache_len || kv < 1 || heads % kv || dim % 2 || dim > 1024) return -1;
    const int half = dim / 2, group = heads / kv, len = pos + 1;
    float *scores = alloc_floats((size_t)len);
    float *q = alloc_floats((size_t)dim), *acc = alloc_floats((size_t)dim);
    if (!scores || !q || !acc) {
        free(scores);
        free(q);
        free(acc);
        return -2;
    }
    for (int head = 0; head < kv; head++) { /* the new key, rotated, and value into the caches */
        const uint16_t *kin = qkv + (size_t)(heads + head) * dim, *vin = qkv + (size_t)(heads + kv + head) * dim;
        uint16_t *krow = k_cache + ((size_t)head * cache_len + pos) * dim;
        uint16_t *vrow = v_cache + ((size_t)head * cache_len + pos) * dim;
        for (int i = 0; i < dim; i++) {
            const float a = round_bf16(from_bf16(kin[i]) * from_bf16(cos[i]));
            const float b = round_bf16(from_bf16(kin[(i + half) % dim]) * from_bf16(sin_signed[i]));
            krow[i] = to_bf16(a + b);
            vrow[i] = vin[i];
        }
    }
    for (int h = 0; h < heads; h++) {
        const uint16_t *qin = qkv + (size_t)h * dim;
        const int kvh = h / group;
        for (int i = 0; i < dim; i++) {
            const float a = round_bf16(from_bf16(qin[i]) * from_bf16(cos[i]));
            const float b = round_bf16(from_bf16(qin[(i + half) % dim]) * from_bf16(sin_signed[i]));
            q[i] = round_bf16(a + b);
        }
        const uint16_t *keys = k_cache + (size_t)kvh * cache_len * dim;
        const uint16_t *vals = v_cache + (size_t)kvh * cache_len * dim;
        float top = -INFINITY;
        for (int t = 0; t < len; t++) {
            float part[16] = {0};
            const uint16_t *kr = keys + (size_t)t * dim;
            int i = 0;
            for (; i + 16 <= dim; i += 16)
                for (int j = 0; j < 16; j++) part[j] += q[i + j] * from_bf16(kr[i + j]);
            float s = 0;
            for (int j = 0; j < 16; j++) s += part[j];
            for (; i < dim; i++) s += q[i] * from_bf16(kr[i]);
            scores[t] = s * scaling;
            if (scores[t] > top) top = scores[t];
        }
        float total = 0;
        for (int t = 0; t < len; t++) {
            scores[t] = expf(scores[t] - top);
            total += scores[t];
        }
        for (int i = 0; i < dim; i++) acc[i] = 0;
        for (int t = 0; t < len; t++) {
            const float p = scores[t];
            const uint16_t *vr = vals + (size_t)t * dim;
            for (int i = 0; i < dim; i++) acc[i] += p * from_bf16(vr[i]);
        }
        uint16_t *o = out + (size_t)h * dim;
        for (int i = 0; i < dim; i++) o[i] = to_bf16(acc[i] / total);
    }
    free(scores);
    free(q);
    free(acc);
    return 0;
}

/* out = bf16(y + bias) (bias NULL: bf16(y)), rounded to nearest even as torch's cast: the bf16 GEMV's fp32
   output made a bf16 linear's, without two torch ops over a vocabulary-sized row */
int llm1bit_f32_bias_to_bf16(const float *y, const float *bias, int n, uint16_t *out) {
    store_bf16(y, bias, 1, n, out, n);
    return 0;
}

/* how long the pool's helpers poll for the next job before sleeping (microseconds; 0: sleep at once); returns
   the previous value. The lean decode step polls while it runs (the kernel's calls come ~20-200 us apart and
   torch's own threads are idle then), and restores the default after. */
long llm1bit_pool_spin_us(long us) {
    pthread_once(&P_once, pool_init);
    const long before = pool_spin_ns / 1000;
    __atomic_store_n(&pool_spin_ns, us < 0 ? 0 : 1000 * us, __ATOMIC_RELAXED);
    return before;
}
