// Fake NCCL for the CPU SIMT emulator: the ranks of a communicator are host threads of one process that meet at a
// barrier per collective. Reductions add the ranks' values in rank order in fp32 / fp64 (bf16 rounded once, after
// the sum), so a result is the same on every rank and equals a host sum in rank order. Streams are synchronous.
#include <mutex>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

struct emu_group {
    char id[128];
    int world, joined, refs;
    pthread_barrier_t bar;
    std::vector<const void *> send;
};
struct emu_nccl_comm { emu_group *g; int rank; };

static std::mutex reg_mu;
static std::vector<emu_group *> groups;
static unsigned long uid_counter;

extern "C" ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    std::lock_guard<std::mutex> l(reg_mu);
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "emu-%lu", ++uid_counter);
    return ncclSuccess;
}

extern "C" ncclResult_t ncclCommInitRankConfig(ncclComm_t *c, int world, ncclUniqueId id, int rank, ncclConfig_t *) {
    emu_group *g = NULL;
    {
        std::lock_guard<std::mutex> l(reg_mu);
        for (emu_group *x : groups)
            if (memcmp(x->id, id.internal, 128) == 0 && x->joined < x->world) g = x;
        if (!g) {
            g = new emu_group();
            memcpy(g->id, id.internal, 128);
            g->world = world;
            g->send.assign((size_t)world, NULL);
            pthread_barrier_init(&g->bar, NULL, (unsigned)world);
            groups.push_back(g);
        }
        if (g->world != world) return ncclInvalidArgument;
        g->joined++;
        g->refs++;
    }
    pthread_barrier_wait(&g->bar); // every rank has joined (NCCL's init is collective too)
    *c = new emu_nccl_comm{g, rank};
    return ncclSuccess;
}

extern "C" ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t *st) { *st = ncclSuccess; return ncclSuccess; }
extern "C" ncclResult_t ncclCommFinalize(ncclComm_t) { return ncclSuccess; }
extern "C" ncclResult_t ncclCommDestroy(ncclComm_t c) {
    std::lock_guard<std::mutex> l(reg_mu);
    if (--c->g->refs == 0) {
        for (size_t i = 0; i < groups.size(); i++)
            if (groups[i] == c->g) groups.erase(groups.begin() + (long)i);
        pthread_barrier_destroy(&c->g->bar);
        delete c->g;
    }
    delete c;
    return ncclSuccess;
}
extern "C" ncclResult_t ncclCommAbort(ncclComm_t c) { return ncclCommDestroy(c); }
extern "C" ncclResult_t ncclCommCount(ncclComm_t c, int *n) { *n = c->g->world; return ncclSuccess; }
extern "C" ncclResult_t ncclCommUserRank(ncclComm_t c, int *r) { *r = c->rank; return ncclSuccess; }
extern "C" ncclResult_t ncclCommShrink(ncclComm_t, int *, int, ncclComm_t *, ncclConfig_t *, int) {
    return ncclInternalError; // not emulated
}
extern "C" const char *ncclGetErrorString(ncclResult_t r) { return r == ncclSuccess ? "success" : "emulated error"; }

static size_t tsize(ncclDataType_t t) { return t == ncclFloat64 ? 8 : t == ncclBfloat16 ? 2 : 4; }
static double load(const void *p, size_t i, ncclDataType_t t) {
    if (t == ncclFloat64) return ((const double *)p)[i];
    if (t == ncclBfloat16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return ((const float *)p)[i];
}
static void store(void *p, size_t i, double v, ncclDataType_t t) {
    if (t == ncclFloat64) ((double *)p)[i] = v;
    else if (t == ncclBfloat16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v);
    else ((float *)p)[i] = (float)v;
}

// Every rank publishes its send buffer; each computes its result into a private copy; after a second barrier (no
// rank reads a send buffer any more) the results are written, so in-place use is safe; a third barrier ends it.
static ncclResult_t collective(ncclComm_t c, const void *send, void *recv, size_t n, ncclDataType_t t, int op) {
    emu_group *g = c->g;
    int W = g->world, r = c->rank;
    size_t es = tsize(t), out_n = op == 2 ? n * (size_t)W : n;
    std::vector<unsigned char> out(out_n * es);
    g->send[(size_t)r] = send;
    pthread_barrier_wait(&g->bar);
    if (op == 2) { // all-gather: rank q's n elements at q * n
        for (int q = 0; q < W; q++) memcpy(out.data() + (size_t)q * n * es, g->send[(size_t)q], n * es);
    } else { // all-reduce (op 0) of n elements, or reduce-scatter (op 1) of this rank's n elements
        size_t base = op == 1 ? (size_t)r * n : 0;
        for (size_t i = 0; i < n; i++) {
            double s = 0;
            if (t == ncclFloat64) for (int q = 0; q < W; q++) s += load(g->send[(size_t)q], base + i, t);
            else { float f = 0; for (int q = 0; q < W; q++) f += (float)load(g->send[(size_t)q], base + i, t); s = f; }
            store(out.data(), i, s, t);
        }
    }
    pthread_barrier_wait(&g->bar);
    memcpy(recv, out.data(), out_n * es);
    pthread_barrier_wait(&g->bar);
    return ncclSuccess;
}

extern "C" ncclResult_t ncclAllReduce(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t, ncclComm_t c,
                                      cudaStream_t) { return collective(c, s, r, n, t, 0); }
extern "C" ncclResult_t ncclReduceScatter(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t,
                                          ncclComm_t c, cudaStream_t) { return collective(c, s, r, n, t, 1); }
extern "C" ncclResult_t ncclAllGather(const void *s, void *r, size_t n, ncclDataType_t t, ncclComm_t c,
                                      cudaStream_t) { return collective(c, s, r, n, t, 2); }
