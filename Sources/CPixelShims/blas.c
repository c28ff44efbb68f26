// OpenBLAS loader. See CPixelShims.h for why OpenBLAS is dlopen'ed instead of linked.
#include "CPixelShims.h"
#include <dlfcn.h>
#include <link.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef char *(*str_fn)(void);
typedef int (*int_fn)(void);
typedef void (*set_threads_fn)(int);

static sgemm_fn p_sgemm = NULL;
static str_fn p_corename = NULL;
static str_fn p_config = NULL;
static int_fn p_get_threads = NULL;
static set_threads_fn p_set_threads = NULL;
static int g_initialised = 0;
static int g_preloaded = 0;
static char g_error[512] = "";
static char g_requested[64] = "";
static char g_core_source[64] = "";
static char g_threads_source[64] = "";
static char g_libpath[1024] = "";
static char g_features[256] = "";

// OpenBLAS CBLAS enum values (cblas.h): RowMajor = 101, NoTrans = 111, Trans = 112.
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

const char *pixel_cpu_features(void) {
    if (g_features[0]) return g_features;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const char *names[] = {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512bf16", "avx2", "fma", "avx", "sse4.2"};
    int supported[9] = {
        __builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512bw"),
        __builtin_cpu_supports("avx512dq"), __builtin_cpu_supports("avx512bf16"), __builtin_cpu_supports("avx2"),
        __builtin_cpu_supports("fma"), __builtin_cpu_supports("avx"), __builtin_cpu_supports("sse4.2")};
    for (int i = 0; i < 9; i++) {
        if (supported[i]) {
            if (g_features[0]) strncat(g_features, " ", sizeof(g_features) - strlen(g_features) - 1);
            strncat(g_features, names[i], sizeof(g_features) - strlen(g_features) - 1);
        }
    }
#else
    snprintf(g_features, sizeof g_features, "(not x86)");
#endif
    if (!g_features[0]) snprintf(g_features, sizeof g_features, "(none)");
    return g_features;
}

/// The OpenBLAS core for this CPU, from its feature flags; NULL when OpenBLAS's own detection is fine.
static const char *core_for_cpu(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return "SKYLAKEX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "HASWELL";
    if (__builtin_cpu_supports("avx")) return "SANDYBRIDGE";
    if (__builtin_cpu_supports("sse4.2")) return "NEHALEM";
    return NULL;
#else
    return NULL;
#endif
}

int pixel_cpu_affinity_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return pixel_cpu_online_count();
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

int pixel_cpu_online_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int local_ranks(void) {
    const char *keys[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"};
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(keys[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return 1;
}

static const char *candidate_names[] = {"libopenblas.so.0", "libopenblas.so", "libopenblasp.so.0", NULL};

int pixel_blas_init(void) {
    if (g_initialised) return 0;
    // Was the library mapped before us (e.g. a dependency linked it)? Then its constructor already ran.
    for (int i = 0; candidate_names[i]; i++) {
        void *h = dlopen(candidate_names[i], RTLD_NOW | RTLD_NOLOAD);
        if (h) { g_preloaded = 1; dlclose(h); break; }
    }
    const char *user_core = getenv("OPENBLAS_CORETYPE");
    if (user_core && user_core[0]) {
        snprintf(g_requested, sizeof g_requested, "%s", user_core);
        snprintf(g_core_source, sizeof g_core_source, "user (OPENBLAS_CORETYPE)");
    } else {
        const char *core = core_for_cpu();
        if (core) {
            setenv("OPENBLAS_CORETYPE", core, 1);
            snprintf(g_requested, sizeof g_requested, "%s", core);
            snprintf(g_core_source, sizeof g_core_source, "cpu-flags");
        } else {
            snprintf(g_requested, sizeof g_requested, "(auto)");
            snprintf(g_core_source, sizeof g_core_source, "openblas-detection");
        }
    }
    const char *user_threads = getenv("OPENBLAS_NUM_THREADS");
    if (user_threads && atoi(user_threads) > 0) {
        snprintf(g_threads_source, sizeof g_threads_source, "user (OPENBLAS_NUM_THREADS)");
    } else {
        int cores = pixel_cpu_affinity_count();
        int online = pixel_cpu_online_count();
        int per_rank = online / local_ranks();
        int n = cores < per_rank ? cores : per_rank;
        if (n < 1) n = 1;
        char buf[16];
        snprintf(buf, sizeof buf, "%d", n);
        setenv("OPENBLAS_NUM_THREADS", buf, 1);
        snprintf(g_threads_source, sizeof g_threads_source, "cores/local-ranks");
    }
    void *handle = NULL;
    const char *override = getenv("PIXELLM_OPENBLAS_LIB");
    if (override && override[0]) handle = dlopen(override, RTLD_NOW | RTLD_GLOBAL);
    for (int i = 0; !handle && candidate_names[i]; i++) handle = dlopen(candidate_names[i], RTLD_NOW | RTLD_GLOBAL);
    if (!handle) {
        snprintf(g_error, sizeof g_error,
                 "cannot load OpenBLAS (%s); install Debian's libopenblas-dev or set PIXELLM_OPENBLAS_LIB", dlerror());
        return 1;
    }
    p_sgemm = (sgemm_fn)dlsym(handle, "cblas_sgemm");
    p_corename = (str_fn)dlsym(handle, "openblas_get_corename");
    p_config = (str_fn)dlsym(handle, "openblas_get_config");
    p_get_threads = (int_fn)dlsym(handle, "openblas_get_num_threads");
    p_set_threads = (set_threads_fn)dlsym(handle, "openblas_set_num_threads");
    if (!p_sgemm) {
        snprintf(g_error, sizeof g_error, "the loaded BLAS has no cblas_sgemm");
        return 1;
    }
    Dl_info info;
    if (dladdr((void *)p_sgemm, &info) && info.dli_fname) {
        char *real = realpath(info.dli_fname, NULL);
        snprintf(g_libpath, sizeof g_libpath, "%s", real ? real : info.dli_fname);
        free(real);
    }
    g_initialised = 1;
    return 0;
}

const char *pixel_blas_error(void) { return g_error; }
const char *pixel_blas_corename(void) { return p_corename ? p_corename() : "(unknown)"; }
const char *pixel_blas_requested_core(void) { return g_requested; }
const char *pixel_blas_core_source(void) { return g_core_source; }
const char *pixel_blas_config(void) { return p_config ? p_config() : "(unknown)"; }
const char *pixel_blas_library_path(void) { return g_libpath; }
int pixel_blas_num_threads(void) { return p_get_threads ? p_get_threads() : 1; }
const char *pixel_blas_threads_source(void) { return g_threads_source; }
void pixel_blas_set_num_threads(int n) { if (p_set_threads) p_set_threads(n); }
int pixel_blas_was_preloaded(void) { return g_preloaded; }

void pixel_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (!g_initialised && pixel_blas_init() != 0) {
        fprintf(stderr, "pixellm: %s\n", g_error);
        abort();
    }
    p_sgemm(ROW_MAJOR, transA ? TRANS : NO_TRANS, transB ? TRANS : NO_TRANS, M, N, K, alpha, A, lda, B, ldb, beta,
            C, ldc);
}
