// NCCL communicators (non-blocking, per generation), polled collectives with deadline and abort, shrink, and
// gradient buckets on a side stream. Tested by tests/cuda/test_cuda_nccl.c (skips without a GPU).
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nccl.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/nccl_comm.h"

struct nccl_comm {
    ncclComm_t comm;
    int world, rank, device;
    uint64_t generation;
    int failed; // aborted or an asynchronous error: only ncclCommDestroy-free abort is allowed now
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

extern "C" int nccl_uid_new(unsigned char uid[NCCL_UID_BYTES]) {
    int rc = 0;
    ncclUniqueId id;
    static_assert(sizeof(ncclUniqueId) == NCCL_UID_BYTES, "NCCL_UID_BYTES");
    NCCL_CHECK_GOTO(ncclGetUniqueId(&id));
    memcpy(uid, &id, NCCL_UID_BYTES);
cleanup:
    return rc;
}

extern "C" int nccl_comm_abort(nccl_comm_t *c) {
    int rc = 0;
    if (!c || !c->comm) return 0;
    LOG_W("nccl: aborting communicator (generation %llu, rank %d of %d)", (unsigned long long)c->generation, c->rank,
          c->world);
    c->failed = 1;
    NCCL_CHECK_GOTO(ncclCommAbort(c->comm));
    c->comm = NULL;
cleanup:
    return rc;
}

// Polls the communicator's asynchronous state until it is no longer ncclInProgress (init, finalize, a
// non-blocking call), or until the deadline / abort callback / an error: then aborts.
static int comm_poll_ready(nccl_comm_t *c, double deadline, nccl_abort_fn abort_fn, void *ud, const char *what) {
    int rc = 0;
    for (;;) {
        ncclResult_t st = ncclSuccess;
        NCCL_CHECK_GOTO(ncclCommGetAsyncError(c->comm, &st));
        if (st == ncclSuccess) break;
        CHECK_GOTO(st == ncclInProgress, LLAVA_ECUDA, "nccl %s: %s", what, ncclGetErrorString(st));
        CHECK_GOTO(!(abort_fn && abort_fn(ud)), LLAVA_EABORTED, "nccl %s: aborted by the caller", what);
        CHECK_GOTO(now_ms() < deadline, LLAVA_ETIMEOUT, "nccl %s: timed out", what);
        usleep(100);
    }
cleanup:
    if (rc != 0) (void)nccl_comm_abort(c);
    return rc;
}

extern "C" int nccl_comm_wait(nccl_comm_t *c, cudaStream_t s, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    double deadline = now_ms() + timeout_ms;
    CHECK_GOTO(c && c->comm && !c->failed, LLAVA_EINVAL, "nccl: communicator is closed or failed");
    for (;;) {
        cudaError_t q = cudaStreamQuery(s);
        if (q == cudaSuccess) break;
        CHECK_GOTO(q == cudaErrorNotReady, LLAVA_ECUDA, "nccl wait: %s", cudaGetErrorString(q));
        ncclResult_t st = ncclSuccess;
        NCCL_CHECK_GOTO(ncclCommGetAsyncError(c->comm, &st));
        CHECK_GOTO(st == ncclSuccess || st == ncclInProgress, LLAVA_ECUDA, "nccl wait: %s", ncclGetErrorString(st));
        CHECK_GOTO(!(abort_fn && abort_fn(ud)), LLAVA_EABORTED, "nccl wait: aborted by the caller");
        CHECK_GOTO(now_ms() < deadline, LLAVA_ETIMEOUT, "nccl wait: timed out after %d ms", timeout_ms);
        usleep(100);
    }
cleanup:
    if (rc != 0 && rc != LLAVA_EINVAL) (void)nccl_comm_abort(c);
    return rc;
}

static ncclConfig_t comm_config(void) {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; // every call returns at once; we poll, so ncclCommAbort can always break a hang
    return cfg;
}

extern "C" int nccl_comm_open(nccl_comm_t **out, const unsigned char uid[NCCL_UID_BYTES], int world, int rank,
                              int device, uint64_t generation, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    nccl_comm_t *c = NULL;
    ncclUniqueId id;
    ncclConfig_t cfg = comm_config();
    double deadline = now_ms() + timeout_ms;
    *out = NULL;
    CHECK_GOTO(world >= 1 && rank >= 0 && rank < world && timeout_ms > 0, LLAVA_EINVAL,
               "nccl_comm_open: world=%d rank=%d timeout=%d", world, rank, timeout_ms);
    c = (nccl_comm_t *)calloc(1, sizeof *c);
    CHECK_GOTO(c != NULL, LLAVA_ENOMEM, "out of memory");
    c->world = world;
    c->rank = rank;
    c->device = device;
    c->generation = generation;
    memcpy(&id, uid, NCCL_UID_BYTES);
    CUDA_CHECK_GOTO(cudaSetDevice(device));
    NCCL_CHECK_GOTO(ncclCommInitRankConfig(&c->comm, world, id, rank, &cfg));
    RC_CHECK_GOTO(comm_poll_ready(c, deadline, abort_fn, ud, "init"));
    LOG_I("nccl: rank %d of %d on cuda:%d joined generation %llu", rank, world, device,
          (unsigned long long)generation);
    *out = c;
    c = NULL;
cleanup:
    if (c) {
        if (c->comm) (void)ncclCommAbort(c->comm);
        free(c);
    }
    return rc;
}

extern "C" void nccl_comm_close(nccl_comm_t **p, int timeout_ms) {
    if (!p || !*p) return;
    nccl_comm_t *c = *p;
    if (c->comm && !c->failed) {
        // finalize is non-blocking too: poll it with the deadline; comm_poll_ready aborts it when it fails
        ncclResult_t r = ncclCommFinalize(c->comm);
        if ((r == ncclSuccess || r == ncclInProgress) &&
            comm_poll_ready(c, now_ms() + (timeout_ms > 0 ? timeout_ms : 10000), NULL, NULL, "finalize") == 0)
            (void)ncclCommDestroy(c->comm);
        else if (c->comm)
            (void)ncclCommAbort(c->comm);
        c->comm = NULL;
    } else if (c->comm) {
        (void)ncclCommAbort(c->comm);
    }
    free(c);
    *p = NULL;
}

extern "C" int nccl_comm_shrink(nccl_comm_t *c, const int *exclude, int n_exclude, uint64_t new_generation,
                                int timeout_ms, nccl_abort_fn abort_fn, void *ud, nccl_comm_t **out) {
    int rc = 0;
    nccl_comm_t *n = NULL;
    ncclConfig_t cfg = comm_config();
    double deadline = now_ms() + timeout_ms;
    *out = NULL;
    CHECK_GOTO(c && c->comm && n_exclude >= 0 && n_exclude < c->world, LLAVA_EINVAL,
               "nccl_comm_shrink: bad communicator or %d excluded ranks", n_exclude);
    n = (nccl_comm_t *)calloc(1, sizeof *n);
    CHECK_GOTO(n != NULL, LLAVA_ENOMEM, "out of memory");
    // ncclCommShrink takes a non-const list; copy it
    {
        int ex[1024];
        CHECK_GOTO(n_exclude <= 1024, LLAVA_EINVAL, "nccl_comm_shrink: too many excluded ranks");
        for (int i = 0; i < n_exclude; i++) ex[i] = exclude[i];
        NCCL_CHECK_GOTO(ncclCommShrink(c->comm, ex, n_exclude, &n->comm, &cfg, NCCL_SHRINK_ABORT));
    }
    n->device = c->device;
    n->generation = new_generation;
    RC_CHECK_GOTO(comm_poll_ready(n, deadline, abort_fn, ud, "shrink"));
    NCCL_CHECK_GOTO(ncclCommCount(n->comm, &n->world));
    NCCL_CHECK_GOTO(ncclCommUserRank(n->comm, &n->rank));
    c->failed = 1; // NCCL_SHRINK_ABORT aborted the parent's pending work: only abort/close it now
    LOG_I("nccl: shrank to %d ranks (generation %llu), this rank is now %d", n->world,
          (unsigned long long)new_generation, n->rank);
    *out = n;
    n = NULL;
cleanup:
    if (n) {
        if (n->comm) (void)ncclCommAbort(n->comm);
        free(n);
    }
    return rc;
}

extern "C" int nccl_comm_rank(const nccl_comm_t *c) { return c->rank; }
extern "C" int nccl_comm_world(const nccl_comm_t *c) { return c->world; }
extern "C" uint64_t nccl_comm_generation(const nccl_comm_t *c) { return c->generation; }

static ncclDataType_t nccl_type(cuda_dtype_t dt) { return dt == CUDA_DT_BF16 ? ncclBfloat16 : ncclFloat32; }

typedef enum { COLL_ALLREDUCE, COLL_REDUCE_SCATTER, COLL_ALLGATHER } coll_t;

// Enqueues one collective (the non-blocking call may return ncclInProgress: poll it to completion of the enqueue).
static int coll_enqueue(nccl_comm_t *c, coll_t op, const void *send, void *recv, size_t count, ncclDataType_t ty,
                        cudaStream_t s, double deadline, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    ncclResult_t r = ncclSuccess;
    CHECK_GOTO(c && c->comm && !c->failed, LLAVA_EINVAL, "nccl: communicator is closed or failed");
    if (op == COLL_ALLREDUCE) r = ncclAllReduce(send, recv, count, ty, ncclSum, c->comm, s);
    else if (op == COLL_REDUCE_SCATTER) r = ncclReduceScatter(send, recv, count, ty, ncclSum, c->comm, s);
    else r = ncclAllGather(send, recv, count, ty, c->comm, s);
    NCCL_CHECK_GOTO(r);
    if (r == ncclInProgress) RC_CHECK_GOTO(comm_poll_ready(c, deadline, abort_fn, ud, "enqueue"));
cleanup:
    return rc;
}

static int coll_run(nccl_comm_t *c, coll_t op, const void *send, void *recv, size_t count, ncclDataType_t ty,
                    cudaStream_t s, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    double t0 = now_ms();
    RC_CHECK_GOTO(coll_enqueue(c, op, send, recv, count, ty, s, t0 + timeout_ms, abort_fn, ud));
    RC_CHECK_GOTO(nccl_comm_wait(c, s, timeout_ms - (int)(now_ms() - t0) > 1 ? timeout_ms - (int)(now_ms() - t0) : 1,
                                 abort_fn, ud));
cleanup:
    return rc;
}

extern "C" int nccl_allreduce(nccl_comm_t *c, const void *send, void *recv, size_t count, cuda_dtype_t dt,
                              cudaStream_t s, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    return coll_run(c, COLL_ALLREDUCE, send, recv, count, nccl_type(dt), s, timeout_ms, abort_fn, ud);
}
extern "C" int nccl_reduce_scatter(nccl_comm_t *c, const void *send, void *recv, size_t count, cuda_dtype_t dt,
                                   cudaStream_t s, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    return coll_run(c, COLL_REDUCE_SCATTER, send, recv, count, nccl_type(dt), s, timeout_ms, abort_fn, ud);
}
extern "C" int nccl_allgather(nccl_comm_t *c, const void *send, void *recv, size_t count, cuda_dtype_t dt,
                              cudaStream_t s, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    return coll_run(c, COLL_ALLGATHER, send, recv, count, nccl_type(dt), s, timeout_ms, abort_fn, ud);
}
extern "C" int nccl_allreduce_f64(nccl_comm_t *c, double *buf, size_t count, cudaStream_t s, int timeout_ms,
                                  nccl_abort_fn abort_fn, void *ud) {
    return coll_run(c, COLL_ALLREDUCE, buf, buf, count, ncclFloat64, s, timeout_ms, abort_fn, ud);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Buckets                                                                                                    */

struct nccl_bucketer {
    nccl_comm_t *comm;
    const char *send;
    char *recv;
    size_t count, bucket_elems, esize;
    cuda_dtype_t dt;
    cudaStream_t compute, side;
    cudaEvent_t ready, done;
    int nbuckets, launched;
    int next;       // the next bucket to launch (descending: nbuckets - 1 .. 0; -1 when all went)
    size_t *marked; // elements marked per bucket
};

extern "C" int nccl_bucketer_new(nccl_bucketer_t **out, nccl_comm_t *c, const void *send, void *recv, size_t count,
                                 size_t bucket_elems, cuda_dtype_t dt, cudaStream_t compute_stream) {
    int rc = 0;
    nccl_bucketer_t *b = NULL;
    *out = NULL;
    CHECK_GOTO(c && send && recv && count > 0 && bucket_elems > 0, LLAVA_EINVAL, "nccl_bucketer_new: bad arguments");
    b = (nccl_bucketer_t *)calloc(1, sizeof *b);
    CHECK_GOTO(b != NULL, LLAVA_ENOMEM, "out of memory");
    b->comm = c;
    b->send = (const char *)send;
    b->recv = (char *)recv;
    b->count = count;
    b->bucket_elems = bucket_elems;
    b->dt = dt;
    b->esize = cuda_dtype_size(dt);
    b->compute = compute_stream;
    b->nbuckets = (int)((count + bucket_elems - 1) / bucket_elems);
    b->next = b->nbuckets - 1;
    b->marked = (size_t *)calloc((size_t)b->nbuckets, sizeof *b->marked);
    CHECK_GOTO(b->marked, LLAVA_ENOMEM, "out of memory");
    CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&b->side, cudaStreamNonBlocking));
    CUDA_CHECK_GOTO(cudaEventCreateWithFlags(&b->ready, cudaEventDisableTiming));
    CUDA_CHECK_GOTO(cudaEventCreateWithFlags(&b->done, cudaEventDisableTiming));
    *out = b;
    b = NULL;
cleanup:
    nccl_bucketer_free(&b);
    return rc;
}

extern "C" void nccl_bucketer_free(nccl_bucketer_t **p) {
    if (!p || !*p) return;
    nccl_bucketer_t *b = *p;
    if (b->side) {
        (void)cudaStreamSynchronize(b->side);
        (void)cudaStreamDestroy(b->side);
    }
    if (b->ready) (void)cudaEventDestroy(b->ready);
    if (b->done) (void)cudaEventDestroy(b->done);
    free(b->marked);
    free(b);
    *p = NULL;
}

static size_t bucket_size(const nccl_bucketer_t *b, int k) {
    size_t start = (size_t)k * b->bucket_elems;
    return start + b->bucket_elems <= b->count ? b->bucket_elems : b->count - start;
}

// The side stream waits for everything enqueued so far on the compute stream, then reduces the next bucket.
static int bucket_launch_next(nccl_bucketer_t *b) {
    int rc = 0;
    int k = b->next;
    size_t off = (size_t)k * b->bucket_elems * b->esize;
    CUDA_CHECK_GOTO(cudaEventRecord(b->ready, b->compute));
    CUDA_CHECK_GOTO(cudaStreamWaitEvent(b->side, b->ready, 0));
    // the enqueue itself is bounded; the wait for completion happens in nccl_bucketer_finish
    RC_CHECK_GOTO(coll_enqueue(b->comm, COLL_ALLREDUCE, b->send + off, b->recv + off, bucket_size(b, k),
                               nccl_type(b->dt), b->side, now_ms() + 60000.0, NULL, NULL));
    b->next--;
    b->launched++;
cleanup:
    return rc;
}

extern "C" int nccl_bucketer_mark_ready(nccl_bucketer_t *b, size_t offset, size_t count) {
    int rc = 0;
    size_t end = offset + count;
    CHECK_GOTO(offset <= b->count && count <= b->count - offset, LLAVA_EINVAL,
               "nccl_bucketer_mark_ready: range [%zu, %zu) outside %zu elements", offset, end, b->count);
    for (size_t pos = offset; pos < end;) {
        int k = (int)(pos / b->bucket_elems);
        size_t bend = (size_t)k * b->bucket_elems + bucket_size(b, k);
        size_t n = (end < bend ? end : bend) - pos;
        CHECK_GOTO(k <= b->next && b->marked[k] + n <= bucket_size(b, k), LLAVA_EINVAL,
                   "nccl_bucketer_mark_ready: bucket %d marked twice", k);
        b->marked[k] += n;
        pos += n;
    }
    while (b->next >= 0 && b->marked[b->next] == bucket_size(b, b->next)) RC_CHECK_GOTO(bucket_launch_next(b));
cleanup:
    return rc;
}

extern "C" int nccl_bucketer_launch_rest(nccl_bucketer_t *b) {
    int rc = 0;
    while (b->next >= 0) RC_CHECK_GOTO(bucket_launch_next(b));
cleanup:
    return rc;
}

extern "C" void nccl_bucketer_reset(nccl_bucketer_t *b) {
    memset(b->marked, 0, (size_t)b->nbuckets * sizeof *b->marked);
    b->next = b->nbuckets - 1;
    b->launched = 0;
}

extern "C" int nccl_bucketer_finish(nccl_bucketer_t *b, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    RC_CHECK_GOTO(nccl_bucketer_launch_rest(b));
    RC_CHECK_GOTO(nccl_comm_wait(b->comm, b->side, timeout_ms, abort_fn, ud));
    CUDA_CHECK_GOTO(cudaEventRecord(b->done, b->side));
    CUDA_CHECK_GOTO(cudaStreamWaitEvent(b->compute, b->done, 0));
cleanup:
    nccl_bucketer_reset(b);
    return rc;
}

extern "C" int nccl_bucketer_launched(const nccl_bucketer_t *b) { return b->launched; }
extern "C" int nccl_bucketer_count(const nccl_bucketer_t *b) { return b->nbuckets; }
