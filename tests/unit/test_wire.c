/* Tests common/wire: round trip, every malformed-frame class, a seeded mutation loop, and ZeroMQ send/recv over
 * inproc with ROUTER identities. Run: ctest -R test_wire */
#include "common/err.h"
#include "common/wire.h"
#include "tests/test.h"

#include <stdint.h>
#include <zmq.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_roundtrip(void) {
    wire_msg_t m, d;
    CHECK_RC(wire_msg_init(&m, MSG_MB, 7, 3, 123456789012ll), 0);
    cJSON *arr = cJSON_AddArrayToObject(m.body, "samples");
    for (int i = 0; i < 5; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(i * 1000));
    cJSON_AddStringToObject(m.body, "note", "h\xc3\xa9llo");
    uint8_t *buf;
    size_t len;
    CHECK_RC(wire_encode(&m, &buf, &len), 0);
    char why[160];
    CHECK_RC(wire_decode(buf, len, &d, why, sizeof why), 0);
    CHECK_EQ_INT(d.type, MSG_MB);
    CHECK_EQ_INT(d.job, 7);
    CHECK_EQ_INT(d.generation, 3);
    CHECK_EQ_INT(d.step, 123456789012ll);
    int64_t *s;
    CHECK_EQ_INT(wire_get_i64_array(d.body, "samples", 100, &s), 5);
    CHECK(s && s[4] == 4000);
    free(s);
    CHECK_EQ_INT(wire_get_i64_array(d.body, "samples", 4, &s), -1); /* longer than allowed */
    CHECK_EQ_INT(wire_get_i64_array(d.body, "note", 4, &s), -1);    /* not an array */
    CHECK(strcmp(wire_get_str(d.body, "note", ""), "h\xc3\xa9llo") == 0);
    CHECK_EQ_INT(wire_get_i64(d.body, "missing", -5), -5);
    CHECK(strcmp(wire_type_name(MSG_MB), "MB") == 0);
    CHECK(strcmp(wire_type_name(999), "?") == 0);
    wire_msg_clear(&d);

    /* the types added to version 1 (replacement joins, DRAIN) decode with their numbers and names */
    static const struct { int type, num; const char *name; } joins[] = {
        {MSG_STATE_LOADED, 9, "STATE_LOADED"}, {MSG_STATE_SEND, 43, "STATE_SEND"}, {MSG_STATE_RECV, 44, "STATE_RECV"},
        {MSG_DRAIN, 45, "DRAIN"}};
    for (int i = 0; i < (int)(sizeof joins / sizeof *joins); i++) {
        wire_msg_t j, jd;
        uint8_t *jb;
        size_t jl;
        CHECK_EQ_INT(joins[i].type, joins[i].num);
        CHECK(strcmp(wire_type_name(joins[i].type), joins[i].name) == 0);
        CHECK_RC(wire_msg_init(&j, joins[i].type, 2, 5, 17), 0);
        CHECK_RC(wire_encode(&j, &jb, &jl), 0);
        CHECK_RC(wire_decode(jb, jl, &jd, why, sizeof why), 0);
        CHECK_EQ_INT(jd.type, joins[i].type);
        CHECK_EQ_INT(jd.step, 17);
        wire_msg_clear(&jd);
        wire_msg_clear(&j);
        free(jb);
    }

    /* malformed frames, each its own reason */
    CHECK_RC(wire_decode(buf, 10, &d, why, sizeof why), LLAVA_EFORMAT);           /* short */
    CHECK(strstr(why, "shorter") != NULL);
    CHECK_RC(wire_decode(buf, len - 1, &d, why, sizeof why), LLAVA_EFORMAT);      /* truncated body */
    CHECK(strstr(why, "body length") != NULL);
    uint8_t *bad = malloc(len);
    memcpy(bad, buf, len);
    bad[0] ^= 1;
    CHECK_RC(wire_decode(bad, len, &d, why, sizeof why), LLAVA_EFORMAT);          /* magic */
    memcpy(bad, buf, len);
    bad[4] = 9;
    CHECK_RC(wire_decode(bad, len, &d, why, sizeof why), LLAVA_EUNSUPPORTED);     /* version */
    memcpy(bad, buf, len);
    bad[6] = 200;
    CHECK_RC(wire_decode(bad, len, &d, why, sizeof why), LLAVA_EFORMAT);          /* type */
    memcpy(bad, buf, len);
    bad[WIRE_HEADER_BYTES] = '[';
    CHECK_RC(wire_decode(bad, len, &d, why, sizeof why), LLAVA_EFORMAT);          /* not an object */
    memcpy(bad, buf, len);
    bad[31] = 0x7f; /* body length > limit */
    CHECK_RC(wire_decode(bad, len, &d, why, sizeof why), LLAVA_EFORMAT);

    /* mutation loop: never crashes, decodes or fails cleanly */
    int ok = 0, fail = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(bad, buf, len);
        int flips = 1 + (int)(next_rand() % 4);
        for (int f = 0; f < flips; f++) bad[next_rand() % len] = (uint8_t)next_rand();
        size_t l = (next_rand() % 4 == 0) ? next_rand() % (len + 1) : len;
        int rc = wire_decode(bad, l, &d, why, sizeof why);
        if (rc == 0) {
            ok++;
            CHECK(d.body != NULL);
            wire_msg_clear(&d);
        } else {
            fail++;
            CHECK(rc == LLAVA_EFORMAT || rc == LLAVA_EUNSUPPORTED);
        }
    }
    CHECK(ok > 0 && fail > 0);
    free(bad);
    free(buf);
    wire_msg_clear(&m);
}

static void test_zmq(void) {
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER), *dealer = zmq_socket(ctx, ZMQ_DEALER);
    CHECK(zmq_bind(router, "inproc://wire-test") == 0);
    zmq_setsockopt(dealer, ZMQ_ROUTING_ID, "w1", 2);
    CHECK(zmq_connect(dealer, "inproc://wire-test") == 0);
    wire_msg_t m, r;
    wire_msg_init(&m, MSG_REGISTER, 0, 0, -1);
    cJSON_AddStringToObject(m.body, "host", "here");
    CHECK_RC(wire_send(dealer, NULL, 0, &m, 0), 0);
    uint8_t id[WIRE_MAX_IDENTITY];
    size_t idlen = 0;
    CHECK_RC(wire_recv(router, id, &idlen, &r, 0), 0);
    CHECK_EQ_INT(idlen, 2);
    CHECK(memcmp(id, "w1", 2) == 0);
    CHECK_EQ_INT(r.type, MSG_REGISTER);
    CHECK(strcmp(wire_get_str(r.body, "host", ""), "here") == 0);
    wire_msg_clear(&r);
    /* reply through the identity */
    wire_msg_clear(&m);
    wire_msg_init(&m, MSG_WELCOME, 0, 0, -1);
    CHECK_RC(wire_send(router, id, idlen, &m, 0), 0);
    CHECK_RC(wire_recv(dealer, NULL, NULL, &r, 0), 0);
    CHECK_EQ_INT(r.type, MSG_WELCOME);
    wire_msg_clear(&r);
    /* garbage frame is dropped with LLAVA_EFORMAT, and the next good one still arrives */
    CHECK(zmq_send(dealer, "garbage", 7, 0) == 7);
    CHECK_RC(wire_send(dealer, NULL, 0, &m, 0), 0);
    CHECK_RC(wire_recv(router, id, &idlen, &r, 0), LLAVA_EFORMAT);
    CHECK_RC(wire_recv(router, id, &idlen, &r, 0), 0);
    CHECK_EQ_INT(r.type, MSG_WELCOME);
    wire_msg_clear(&r);
    CHECK_RC(wire_recv(router, id, &idlen, &r, ZMQ_DONTWAIT), LLAVA_ETIMEOUT);
    wire_msg_clear(&m);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(router);
    zmq_close(dealer);
    zmq_ctx_term(ctx);
}

int main(void) {
    log_set_level(LOG_NONE);
    test_roundtrip();
    test_zmq();
    return test_finish();
}
