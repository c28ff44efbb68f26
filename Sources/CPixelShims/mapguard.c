// A SIGBUS on a memory-mapped checkpoint means the file was truncated (or its storage vanished) under the process:
// the page the program reads no longer exists. Instead of dying by the signal, the handler names the file and the
// offset and exits with status 74 (EX_IOERR). Addresses outside every registered mapping are a real bug: the
// default action is restored and the signal raised again.
#include "CPixelShims.h"
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>

#define PIXEL_MAPS 4096
#define PIXEL_MAP_PATH 1024

typedef struct {
    _Atomic(uintptr_t) start;   // 0: free slot
    size_t length;
    char path[PIXEL_MAP_PATH];
} pixel_map_slot;

static pixel_map_slot slots[PIXEL_MAPS];
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int handler_installed = 0;

static void put(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void put_number(uint64_t v) {
    char buf[24];
    int i = 23;
    buf[i] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v > 0 && i > 0);
    put(buf + i);
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t a = (uintptr_t)info->si_addr;
    for (int i = 0; i < PIXEL_MAPS; i++) {
        uintptr_t s = atomic_load(&slots[i].start);
        if (s != 0 && a >= s && a < s + slots[i].length) {
            put("pixellm: error: the memory-mapped file ");
            put(slots[i].path);
            put(" was truncated or removed under this process (reading byte ");
            put_number((uint64_t)(a - s));
            put(" of the ");
            put_number((uint64_t)slots[i].length);
            put(" mapped at open failed); restore the file and start again (a training run resumes from its last checkpoint)\n");
            _exit(74);
        }
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install(void) {
    if (atomic_exchange(&handler_installed, 1)) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}

int pixel_mapguard_register(const void *start, size_t length, const char *path) {
    if (start == NULL || length == 0) return 0;
    install();
    pthread_mutex_lock(&slots_lock);
    int placed = 0;
    for (int i = 0; i < PIXEL_MAPS; i++) {
        if (atomic_load(&slots[i].start) == 0) {
            slots[i].length = length;
            strncpy(slots[i].path, path, PIXEL_MAP_PATH - 1);
            slots[i].path[PIXEL_MAP_PATH - 1] = 0;
            atomic_store(&slots[i].start, (uintptr_t)start);
            placed = 1;
            break;
        }
    }
    pthread_mutex_unlock(&slots_lock);
    return placed;
}

void pixel_mapguard_unregister(const void *start) {
    if (start == NULL) return;
    pthread_mutex_lock(&slots_lock);
    for (int i = 0; i < PIXEL_MAPS; i++) {
        if (atomic_load(&slots[i].start) == (uintptr_t)start) { atomic_store(&slots[i].start, 0); break; }
    }
    pthread_mutex_unlock(&slots_lock);
}
