// MPI life-cycle and HDF5 helpers that need C (macros, callbacks).
#include "CPixelShims.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char g_mpi_version[MPI_MAX_LIBRARY_VERSION_STRING + 1] = "";

const char *pixel_mpi_library_version(void) {
    if (!g_mpi_version[0]) {
        int len = 0;
        MPI_Get_library_version(g_mpi_version, &len);
        g_mpi_version[len < MPI_MAX_LIBRARY_VERSION_STRING ? len : MPI_MAX_LIBRARY_VERSION_STRING] = 0;
        // keep the first line only
        char *nl = strchr(g_mpi_version, '\n');
        if (nl) *nl = 0;
    }
    return g_mpi_version;
}

static void finalize_at_exit(void) { pixel_mpi_finalize(); }

int pixel_mpi_init(int *provided) {
    int initialised = 0, finalized = 0;
    MPI_Initialized(&initialised);
    MPI_Finalized(&finalized);
    if (finalized) return MPI_ERR_OTHER;
    if (initialised) {
        MPI_Query_thread(provided);
        return MPI_SUCCESS;
    }
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, provided);
    if (rc != MPI_SUCCESS) return rc;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    atexit(finalize_at_exit);
    return MPI_SUCCESS;
}

void pixel_mpi_finalize(void) {
    int initialised = 0, finalized = 0;
    MPI_Initialized(&initialised);
    MPI_Finalized(&finalized);
    if (initialised && !finalized) MPI_Finalize();
}

int pixel_mpi_launched(void) {
    const char *keys[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", NULL};
    for (int i = 0; keys[i]; i++)
        if (getenv(keys[i])) return 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------------
void pixel_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

const char *pixel_h5_version(void) {
    static char buf[32];
    unsigned maj = 0, min = 0, rel = 0;
    H5get_libversion(&maj, &min, &rel);
    snprintf(buf, sizeof buf, "%u.%u.%u", maj, min, rel);
    return buf;
}

typedef struct {
    char *buf;
    size_t len, cap;
} name_list;

static herr_t visit_cb(hid_t obj, const char *name, const H5O_info_t *info, void *op_data) {
    (void)obj;
    if (info->type != H5O_TYPE_DATASET) return 0;
    name_list *l = (name_list *)op_data;
    size_t n = strlen(name);
    if (l->len + n + 2 > l->cap) {
        size_t cap = (l->cap + n + 2) * 2;
        char *nb = realloc(l->buf, cap);
        if (!nb) return -1;
        l->buf = nb;
        l->cap = cap;
    }
    memcpy(l->buf + l->len, name, n);
    l->len += n;
    l->buf[l->len++] = '\n';
    l->buf[l->len] = 0;
    return 0;
}

char *pixel_h5_list_datasets(hid_t file) {
    name_list l = {malloc(256), 0, 256};
    if (!l.buf) return NULL;
    l.buf[0] = 0;
    if (H5Ovisit(file, H5_INDEX_NAME, H5_ITER_INC, visit_cb, &l) < 0) {
        free(l.buf);
        return NULL;
    }
    return l.buf;
}

int pixel_h5_dataset_type_class(hid_t dset, size_t *size) {
    hid_t t = H5Dget_type(dset);
    if (t < 0) return -1;
    H5T_class_t c = H5Tget_class(t);
    *size = H5Tget_size(t);
    H5Tclose(t);
    return c == H5T_FLOAT ? 0 : (c == H5T_INTEGER ? 1 : 2);
}
