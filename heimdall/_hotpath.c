/*
 * heimdall._hotpath: the UDP cache-hit path in C.
 *
 * Why: at low and medium rates every datagram costs a wakeup, and the Python
 * of the hit path (frames, address strings and tuples, argument parsing of
 * sendto, the bytes concatenations) was a third of the worker's CPU per query
 * (see docs/performance.md). This object is the loop's reader callback itself:
 * one recvmmsg takes every waiting datagram, each is looked up in the cache
 * dict with the same key the Python path uses (data[2:].lower()), a fresh hit
 * is built into a send slot (client ID + entry.head + client question +
 * entry.tail) and one sendmmsg answers them all, replying to the address the
 * query came from. With rate limiting on, each datagram first goes through
 * the Python admit hook (and, when turned down, to the Python limited()).
 * Anything else (misses, stale entries, malformed datagrams) goes to the
 * Python slow path callback unchanged, so the semantics stay in one place:
 * heimdall/server.py. A datagram longer than a slot, which recvmmsg cut
 * (MSG_TRUNC), is answered FORMERR here (dropped when it is a response): the
 * slow path would see a message that is not the one the client sent.
 *
 * Beside the reader, helpers of the miss path live here because they are C for the same
 * reason: recv_burst (an upstream channel's datagrams, heimdall/channels.py), the wire walks
 * a miss makes, parse_query and scan_response (heimdall/wire.py calls them), the cache key of a
 * query the hot path could not answer (heimdall/cachekey.py), the reply test of RFC 5452
 * (reply_matches), the bytes of a plain answer's entry (entry_parts, heimdall/cache.py) and the
 * blocklist's suffix walk (suffix_in, heimdall/blocklist.py); their Python twins are the
 * reference they are tested against (tests/test_wire_props.py). A DoH request's header
 * block is split and its path Huffman-decoded by heimdall/hpack.c.
 *
 * Nothing here owns cache state: entries are the Python cache.Entry objects,
 * re-aged by calling entry.refresh(now) exactly as the Python path does.
 * Where Entry keeps its fields is learned once, at construction, from
 * heimdall.cache.Entry itself (held, so its address cannot be reused), and
 * only objects of exactly that type are read through it: anything else in the
 * cache goes to the slow path. The objects around the reader are not trusted
 * either: every field is type- and range-checked before it is used, label
 * counts that are not small ints are added to as Python would, a hook that
 * calls back into the reader is refused (the batch's buffers are in use), and
 * an object whose __init__ has not run refuses to read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>  /* T_OBJECT_EX: how __slots__ members are stored */

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

PyObject *huffman_decode(PyObject *module, PyObject *arg);  /* heimdall/hpack.c */
PyObject *neutral_fields(PyObject *module, PyObject *arg);  /* heimdall/hpack.c */

#define BATCH 64        /* slots per recvmmsg/sendmmsg */
#define HEADER 12       /* DNS header bytes */
#define BUFSIZE 4096    /* bytes per slot: what the Python path reads per datagram */
#define ROUNDS 4        /* full batches read per wakeup before yielding to the loop */

typedef struct {
    struct mmsghdr rmsg[BATCH];
    struct iovec riov[BATCH];
    struct sockaddr_storage rname[BATCH];
    struct mmsghdr smsg[BATCH];
    struct iovec siov[BATCH];
    unsigned char rbuf[BATCH][BUFSIZE];
    unsigned char sbuf[BATCH][BUFSIZE];
} Slots;

/* Where cache.Entry keeps its __slots__, so a hit reads them without attribute lookups. */
typedef struct {
    PyTypeObject *type;   /* heimdall.cache.Entry (a strong reference); only this exact type is read */
    Py_ssize_t head, tail, qend, aged, lid, mark;
} EntryLayout;

typedef struct {
    PyObject_HEAD
    int fd;
    int busy;             /* inside a call: a hook calling back in would reuse the batch's buffers */
    Slots *s;             /* NULL until __init__ has run */
    EntryLayout layout;
    PyObject *cache;      /* dict: key bytes -> cache.Entry */
    PyObject *labels;     /* list of ints: hits per Entry.lid (Stats.hit_labels) */
    PyObject *stats;      /* Stats: hits_fast, udp_wakeups, udp_datagrams are added to */
    PyObject *slow;       /* slow(data: bytes, addr: tuple, now: int) for everything but fresh hits */
    PyObject *time_hits;  /* time_hits(n, seconds_each) per batch with hits, or None */
    PyObject *admit;      /* admit(packed client IP) -> bool (rate limit), or None */
    PyObject *limited;    /* limited(data, addr) for datagrams admit turned down */
    unsigned long long send_errors;
    int limit;            /* datagrams asked per recvmmsg (adapt) */
    unsigned int probe;
    double last;          /* monotonic time of the previous batch */
} HotPath;

static PyObject *s_head, *s_tail, *s_qend, *s_aged, *s_lid, *s_mark, *s_refresh;
static PyObject *s_hits_fast, *s_udp_wakeups, *s_udp_datagrams, *s_formerr, *s_dropped;

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* the clock time.monotonic() reads */
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* old + n through the number protocol: ints beyond a C long, and anything else a hook may have put there. */
static PyObject *add_slow(PyObject *old, long n)
{
    PyObject *n_obj = PyLong_FromLong(n);
    if (n_obj == NULL)
        return NULL;
    PyObject *sum = PyNumber_Add(old, n_obj);
    Py_DECREF(n_obj);
    return sum;
}

/* old + n (n >= 0) as Python adds it, in C while it fits a long (the hot path's case). */
static inline PyObject *add(PyObject *old, long n)
{
    if (PyLong_CheckExact(old)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(old, &overflow);
        if (!overflow && v <= LONG_MAX - n)
            return PyLong_FromLong(v + n);
    }
    return add_slow(old, n);
}

static int add_to_attr(PyObject *obj, PyObject *name, long n)
{
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL)
        return -1;
    PyObject *new = add(old, n);
    Py_DECREF(old);
    if (new == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, new);
    Py_DECREF(new);
    return rc;
}

/* The sender as the socket module writes addresses: (host, port) or (host, port, flowinfo, scope_id). */
static PyObject *address(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    return Py_BuildValue("(si)", "", 0);
}

/* The offset of type's own __slots__ member `name`, checked to lie inside its instances. */
static int slot_offset(PyTypeObject *type, PyObject *name, Py_ssize_t *offset)
{
    PyObject *d = PyObject_GetAttr((PyObject *)type, name);
    if (d == NULL)
        return -1;
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && PyDescr_TYPE(d) == type;
    if (ok) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        ok = m->type == T_OBJECT_EX && m->offset >= (Py_ssize_t)sizeof(PyObject) &&
             m->offset <= type->tp_basicsize - (Py_ssize_t)sizeof(PyObject *);
        *offset = m->offset;
    }
    Py_DECREF(d);
    if (!ok)
        PyErr_Format(PyExc_TypeError, "%s.%U is not a __slots__ member of its own", type->tp_name, name);
    return ok ? 0 : -1;
}

/* Learn where heimdall.cache.Entry keeps its fields; 0, or -1 with an error set. */
static int learn_layout(EntryLayout *layout)
{
    PyObject *module = PyImport_ImportModule("heimdall.cache");
    PyObject *type = module ? PyObject_GetAttrString(module, "Entry") : NULL;
    Py_XDECREF(module);
    if (type == NULL)
        return -1;
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "heimdall.cache.Entry is not a class");
        Py_DECREF(type);
        return -1;
    }
    PyTypeObject *t = (PyTypeObject *)type;
    EntryLayout l = {NULL};
    if (slot_offset(t, s_head, &l.head) < 0 || slot_offset(t, s_tail, &l.tail) < 0 ||
        slot_offset(t, s_qend, &l.qend) < 0 || slot_offset(t, s_aged, &l.aged) < 0 ||
        slot_offset(t, s_lid, &l.lid) < 0 || slot_offset(t, s_mark, &l.mark) < 0) {
        Py_DECREF(type);
        return -1;
    }
    l.type = t;  /* the reference from GetAttr, kept */
    PyTypeObject *old = layout->type;
    *layout = l;
    Py_XDECREF(old);
    return 0;
}

/* A slot's value (borrowed; NULL when unset). */
static inline PyObject *slot(PyObject *e, Py_ssize_t offset)
{
    return *(PyObject **)((char *)e + offset);
}

/* The entry for this datagram if fresh (a new reference), else NULL (error set only on a real error).
 * The entry is held from the moment it is found: refresh() is Python code and may drop it from the cache. */
static PyObject *fresh_entry(HotPath *self, const unsigned char *data, Py_ssize_t len, PyObject *now_obj, long now)
{
    PyObject *key = PyBytes_FromStringAndSize(NULL, len - 2);
    if (key == NULL)
        return NULL;
    unsigned char *k = (unsigned char *)PyBytes_AS_STRING(key);
    for (Py_ssize_t j = 2; j < len; j++) {  /* bytes.lower(): ASCII A-Z only */
        unsigned char c = data[j];
        k[j - 2] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
    }
    PyObject *e = PyDict_GetItemWithError(self->cache, key);
    Py_XINCREF(e);
    Py_DECREF(key);
    if (e == NULL)
        return NULL;
    if (Py_TYPE(e) != self->layout.type) {  /* not an Entry: the slow path decides */
        Py_DECREF(e);
        return NULL;
    }
    PyObject *aged = slot(e, self->layout.aged);
    int overflow = 0;
    if (aged == NULL || !PyLong_CheckExact(aged) || PyLong_AsLongAndOverflow(aged, &overflow) != now || overflow) {
        PyObject *ok = PyObject_CallMethodOneArg(e, s_refresh, now_obj);
        int fresh = ok ? PyObject_IsTrue(ok) : -1;
        Py_XDECREF(ok);
        if (fresh <= 0) {
            Py_DECREF(e);
            return NULL;
        }
    }
    PyObject **mark = (PyObject **)((char *)e + self->layout.mark);
    if (*mark != Py_True) {  /* asked for: the CLOCK hand gives it a second chance (cache.py) */
        PyObject *old = *mark;
        *mark = Py_NewRef(Py_True);
        Py_XDECREF(old);
    }
    return e;
}

/* Build the reply for a fresh entry into send slot k; 1 if built, 0 if it cannot be (slow path).
 * Every size is range-checked before it is added to another, so no sum can overflow. */
static int build_reply(HotPath *self, PyObject *e, const unsigned char *data, Py_ssize_t len, int k, long *lid)
{
    const EntryLayout *l = &self->layout;
    PyObject *head = slot(e, l->head), *tail = slot(e, l->tail);
    PyObject *qend_obj = slot(e, l->qend), *lid_obj = slot(e, l->lid);
    if (head == NULL || tail == NULL || qend_obj == NULL || lid_obj == NULL || !PyBytes_CheckExact(head) ||
        !PyBytes_CheckExact(tail) || !PyLong_CheckExact(qend_obj) || !PyLong_CheckExact(lid_obj))
        return 0;
    int overflow_q = 0, overflow_l = 0;
    long qend = PyLong_AsLongAndOverflow(qend_obj, &overflow_q);
    *lid = PyLong_AsLongAndOverflow(lid_obj, &overflow_l);
    if (overflow_q || overflow_l || qend < HEADER || qend > len)
        return 0;
    Py_ssize_t hlen = PyBytes_GET_SIZE(head), tlen = PyBytes_GET_SIZE(tail);
    if (hlen > BUFSIZE || tlen > BUFSIZE)
        return 0;
    Py_ssize_t total = 2 + hlen + (qend - HEADER) + tlen;  /* each term at most BUFSIZE */
    if (total > BUFSIZE)
        return 0;
    unsigned char *out = self->s->sbuf[k];
    memcpy(out, data, 2);
    memcpy(out + 2, PyBytes_AS_STRING(head), hlen);
    memcpy(out + 2 + hlen, data + HEADER, qend - HEADER);
    memcpy(out + 2 + hlen + (qend - HEADER), PyBytes_AS_STRING(tail), tlen);
    self->s->siov[k].iov_len = (size_t)total;
    return 1;
}

/* A hit on label lid: hit_labels[lid] += 1 (index 0 when lid is out of range; nothing when the list is empty). */
static void count_label(HotPath *self, long lid)
{
    PyObject *labels = self->labels;
    Py_ssize_t n = PyList_GET_SIZE(labels);
    if (n == 0)
        return;
    if (lid < 0 || lid >= n)
        lid = 0;
    PyObject *old = PyList_GET_ITEM(labels, lid), *new;
    if (PyLong_CheckExact(old)) {
        new = add(old, 1);
    } else {
        Py_INCREF(old);  /* its __add__ is Python code that may change the list */
        new = add_slow(old, 1);
        Py_DECREF(old);
    }
    if (new == NULL || PyList_SetItem(labels, lid, new) < 0)  /* steals new, releases old */
        PyErr_WriteUnraisable(labels);
}

/* Send slot k: the FORMERR wire.error_reply builds for a message without a readable question. */
static void formerr_reply(HotPath *self, const unsigned char *data, int k)
{
    unsigned char *out = self->s->sbuf[k];
    out[0] = data[0];
    out[1] = data[1];
    out[2] = 0x80 | (data[2] & (0x78 | 0x01));  /* QR, the client's opcode and RD */
    out[3] = 0x80 | 1;                          /* RA, FORMERR */
    memset(out + 4, 0, HEADER - 4);             /* no question, no records */
    self->s->siov[k].iov_len = HEADER;
}

/* Send the batch's replies. MSG_DONTWAIT: the loop must never block here, whatever the socket's mode.
 * A full socket buffer (EAGAIN, ENOBUFS) would refuse the rest alike: they are dropped, not retried one by one. */
static void flush(HotPath *self, int total)
{
    int done = 0;
    while (done < total) {
        int sent = sendmmsg(self->fd, self->s->smsg + done, total - done, MSG_DONTWAIT);
        if (sent > 0) {
            done += sent;
            continue;
        }
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            self->send_errors += total - done;
            return;
        }
        self->send_errors++;  /* an error of this reply's own (e.g. an unreachable client): drop it, go on */
        done++;
    }
}

/* The rate-limit hook on the sender's packed IP (4 or 16 bytes): 1 admitted, 0 turned down.
 * A failing hook admits (logged as unraisable), as a limiter bug must not take the service down. */
static int admitted(HotPath *self, int i)
{
    const struct sockaddr_storage *ss = &self->s->rname[i];
    PyObject *ip;
    if (ss->ss_family == AF_INET6)
        ip = PyBytes_FromStringAndSize((const char *)&((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    else
        ip = PyBytes_FromStringAndSize((const char *)&((const struct sockaddr_in *)ss)->sin_addr, 4);
    PyObject *r = ip ? PyObject_CallOneArg(self->admit, ip) : NULL;
    Py_XDECREF(ip);
    int ok = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (ok < 0) {
        PyErr_WriteUnraisable(self->admit);
        return 1;
    }
    return ok;
}

static void call_with_datagram(HotPath *self, PyObject *fn, const unsigned char *data, Py_ssize_t len, int i,
                               PyObject *now_obj)
{
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, len);
    PyObject *addr = bytes ? address(&self->s->rname[i]) : NULL;
    PyObject *r = NULL;
    if (addr != NULL)
        r = now_obj ? PyObject_CallFunctionObjArgs(fn, bytes, addr, now_obj, NULL)
                    : PyObject_CallFunctionObjArgs(fn, bytes, addr, NULL);
    Py_XDECREF(bytes);
    Py_XDECREF(addr);
    if (r == NULL)
        PyErr_WriteUnraisable(fn);
    Py_XDECREF(r);
}

/* Size the next recvmmsg like the Python reader's batch: asking for more datagrams than
 * are queued makes the kernel try (and fail) once more per call, which at low rates,
 * one datagram per wakeup, is a measurable part of a hit. The poller is level-triggered,
 * so datagrams left queued are read on the next callback. A partial read of several
 * asks twice as many next time: under load the queue depth varies from call to call, and
 * an ask of exactly the last count would leave the rest for another callback, while the
 * failed try is cheap spread over several datagrams. A full read doubles the ask when the
 * ask was already above one, when this callback follows the last within 50 us (a burst:
 * the loop called straight back), or every 8th single datagram (a probe). */
static void adapt(HotPath *self, int n, double now)
{
    if (n < self->limit)
        self->limit = n == 1 ? 1 : (2 * n > BATCH ? BATCH : 2 * n);
    else if (self->limit > 1 || now - self->last < 50e-6 || (++self->probe & 7) == 0)
        self->limit = self->limit * 2 > BATCH ? BATCH : self->limit * 2;
    self->last = now;
}

/* A datagram recvmmsg cut to the slot (MSG_TRUNC): FORMERR into send slot k, 1; or 0 to drop a response. */
static int cut(HotPath *self, const unsigned char *data, int k, long *formerr, long *dropped)
{
    if (data[2] & 0x80) {  /* QR: not a query (the slow path drops these too) */
        (*dropped)++;
        return 0;
    }
    formerr_reply(self, data, k);
    (*formerr)++;
    return 1;
}

/* The datagram in rbuf as a fresh hit built into send slot k: 1, or 0 for the slow path. */
static int hit(HotPath *self, const unsigned char *data, Py_ssize_t len, int k, PyObject *now_obj, long now)
{
    if (len <= HEADER)
        return 0;
    PyObject *e = fresh_entry(self, data, len, now_obj, now);
    long lid = 0;
    int built = e != NULL && build_reply(self, e, data, len, k, &lid);
    Py_XDECREF(e);
    if (built)
        count_label(self, lid);
    else if (PyErr_Occurred())
        PyErr_WriteUnraisable((PyObject *)self);  /* a broken entry: serve it the slow way */
    return built;
}

static void add_counts(HotPath *self, long hits, long n, long formerr, long dropped)
{
    if (add_to_attr(self->stats, s_hits_fast, hits) < 0 || add_to_attr(self->stats, s_udp_wakeups, 1) < 0 ||
        add_to_attr(self->stats, s_udp_datagrams, n) < 0 ||
        (formerr && add_to_attr(self->stats, s_formerr, formerr) < 0) ||
        (dropped && add_to_attr(self->stats, s_dropped, dropped) < 0))
        PyErr_WriteUnraisable(self->stats);
}

/* One batch: answer fresh hits, hand the rest to Python. Returns datagrams read, -1 on error. */
static int serve_batch(HotPath *self)
{
    Slots *s = self->s;
    for (int i = 0; i < self->limit; i++)
        s->rmsg[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
    int n = recvmmsg(self->fd, s->rmsg, self->limit, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return 0;  /* EAGAIN, EINTR or a socket error: the loop calls again when readable */
    double t0 = monotonic();
    adapt(self, n, t0);
    long now = (long)t0;
    PyObject *now_obj = PyLong_FromLong(now);
    if (now_obj == NULL)
        return -1;
    int nsend = 0, hits = 0;
    long formerr = 0, dropped = 0;
    for (int i = 0; i < n; i++) {
        const unsigned char *data = s->rbuf[i];
        Py_ssize_t len = s->rmsg[i].msg_len;
        if (self->admit != Py_None && !admitted(self, i)) {
            call_with_datagram(self, self->limited, data, len, i, NULL);
            continue;
        }
        int reply;
        if (s->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC)
            reply = cut(self, data, nsend, &formerr, &dropped);
        else if ((reply = hit(self, data, len, nsend, now_obj, now)))
            hits++;
        else
            call_with_datagram(self, self->slow, data, len, i, now_obj);
        if (reply) {
            s->smsg[nsend].msg_hdr.msg_name = &s->rname[i];
            s->smsg[nsend].msg_hdr.msg_namelen = s->rmsg[i].msg_hdr.msg_namelen;
            nsend++;
        }
    }
    Py_DECREF(now_obj);
    flush(self, nsend);
    add_counts(self, hits, n, formerr, dropped);
    if (hits && self->time_hits != Py_None) {
        PyObject *r = PyObject_CallFunction(self->time_hits, "id", hits, (monotonic() - t0) / n);
        if (r == NULL)
            PyErr_WriteUnraisable(self->time_hits);
        Py_XDECREF(r);
    }
    return n;
}

static PyObject *HotPath_call(HotPath *self, PyObject *args, PyObject *kwargs)
{
    if (self->s == NULL || self->cache == NULL || self->layout.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "HotPath.__init__ has not run");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "HotPath called from one of its own hooks");
        return NULL;
    }
    self->busy = 1;
    int failed = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int asked = self->limit;
        int n = serve_batch(self);
        if (n < 0) {
            failed = 1;
            break;
        }
        if (n < BATCH || asked < BATCH)  /* not a full batch at the largest size: yield to the loop */
            break;
    }
    self->busy = 0;
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static int HotPath_init(HotPath *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"fd", "cache", "labels", "stats", "slow", "time_hits", "admit", "limited", NULL};
    int fd;
    PyObject *cache, *labels, *stats, *slow, *time_hits = Py_None, *admit = Py_None, *limited = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iO!O!OO|OOO", kw, &fd, &PyDict_Type, &cache, &PyList_Type,
                                     &labels, &stats, &slow, &time_hits, &admit, &limited))
        return -1;
    if (!PyCallable_Check(slow) || (time_hits != Py_None && !PyCallable_Check(time_hits)) ||
        (admit != Py_None && !PyCallable_Check(limited))) {
        PyErr_SetString(PyExc_TypeError, "slow, time_hits and (with admit) limited must be callable");
        return -1;
    }
    if (admit != Py_None && !PyCallable_Check(admit)) {
        PyErr_SetString(PyExc_TypeError, "admit must be callable or None");
        return -1;
    }
    if (PyList_GET_SIZE(labels) == 0) {
        PyErr_SetString(PyExc_ValueError, "labels must not be empty");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "HotPath re-initialised from one of its own hooks");
        return -1;
    }
    if (learn_layout(&self->layout) < 0)
        return -1;
    if (self->s == NULL) {
        self->s = PyMem_Calloc(1, sizeof(Slots));
        if (self->s == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    Slots *s = self->s;
    for (int i = 0; i < BATCH; i++) {
        s->riov[i].iov_base = s->rbuf[i];
        s->riov[i].iov_len = BUFSIZE;
        s->rmsg[i].msg_hdr.msg_name = &s->rname[i];
        s->rmsg[i].msg_hdr.msg_iov = &s->riov[i];
        s->rmsg[i].msg_hdr.msg_iovlen = 1;
        s->siov[i].iov_base = s->sbuf[i];
        s->smsg[i].msg_hdr.msg_iov = &s->siov[i];
        s->smsg[i].msg_hdr.msg_iovlen = 1;
    }
    self->fd = fd;
    self->limit = BATCH;
    Py_XSETREF(self->cache, Py_NewRef(cache));
    Py_XSETREF(self->labels, Py_NewRef(labels));
    Py_XSETREF(self->stats, Py_NewRef(stats));
    Py_XSETREF(self->slow, Py_NewRef(slow));
    Py_XSETREF(self->time_hits, Py_NewRef(time_hits));
    Py_XSETREF(self->admit, Py_NewRef(admit));
    Py_XSETREF(self->limited, Py_NewRef(limited));
    return 0;
}

static int HotPath_traverse(HotPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cache);
    Py_VISIT(self->labels);
    Py_VISIT(self->stats);
    Py_VISIT(self->slow);
    Py_VISIT(self->time_hits);
    Py_VISIT(self->admit);
    Py_VISIT(self->limited);
    Py_VISIT(self->layout.type);
    return 0;
}

static int HotPath_clear(HotPath *self)
{
    Py_CLEAR(self->cache);
    Py_CLEAR(self->labels);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->time_hits);
    Py_CLEAR(self->admit);
    Py_CLEAR(self->limited);
    Py_CLEAR(self->layout.type);
    return 0;
}

static void HotPath_dealloc(HotPath *self)
{
    PyObject_GC_UnTrack(self);
    HotPath_clear(self);
    PyMem_Free(self->s);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *HotPath_send_errors(HotPath *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->send_errors);
}

static PyGetSetDef HotPath_getset[] = {
    {"send_errors", (getter)HotPath_send_errors, NULL, "replies the kernel refused (dropped)", NULL},
    {NULL},
};

static PyTypeObject HotPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "heimdall._hotpath.HotPath",
    .tp_doc = PyDoc_STR("HotPath(fd, cache, labels, stats, slow, time_hits=None, admit=None, limited=None): call it when fd is readable"),
    .tp_basicsize = sizeof(HotPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HotPath_init,
    .tp_dealloc = (destructor)HotPath_dealloc,
    .tp_traverse = (traverseproc)HotPath_traverse,
    .tp_clear = (inquiry)HotPath_clear,
    .tp_call = (ternaryfunc)HotPath_call,
    .tp_getset = HotPath_getset,
};

/* recv_burst(fd, limit) -> list of bytes: up to `limit` datagrams waiting on a non-blocking socket
 * (an upstream channel, heimdall/channels.py), in arrival order. The empty socket ends the list
 * without an exception: in Python, the BlockingIOError that ended every burst cost a cache miss ~3 %
 * of its instructions. An error with nothing read yet (e.g. ICMP port unreachable) raises OSError;
 * after a datagram it stays pending on the socket for the next call. */
static unsigned char burst_buf[65536];

static PyObject *recv_burst(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "recv_burst(fd, limit) takes 2 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    long limit = PyLong_AsLong(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT_MAX || limit < 1 || limit > 4096) {
        PyErr_SetString(PyExc_ValueError, "recv_burst: fd must be >= 0 and limit 1..4096");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (long i = 0; i < limit; i++) {
        ssize_t n = recv((int)fd, burst_buf, sizeof burst_buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && PyList_GET_SIZE(out) == 0) {
                Py_DECREF(out);
                return PyErr_SetFromErrno(PyExc_OSError);
            }
            break;
        }
        PyObject *b = PyBytes_FromStringAndSize((const char *)burst_buf, n);
        if (b == NULL || PyList_Append(out, b) < 0) {
            Py_XDECREF(b);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(b);
    }
    return out;
}

/* --- the wire walks of the miss path: heimdall/wire.py's scan_response and parse_query ---
 * The same checks in the same order with the same messages (raised as ValueError; wire.py raises
 * them as WireError, its ValueError): a Python walk cost a miss ~35,000 instructions, a third of
 * them per label and per record. tests/test_wire_props.py holds these to the Python twins. */

static const char *question_end_c(const unsigned char *m, Py_ssize_t n, Py_ssize_t off, Py_ssize_t *out)
{
    Py_ssize_t total = 0;
    for (;;) {
        if (off >= n)
            return "question runs past the end of the message";
        unsigned int length = m[off];
        if (length == 0) {
            off += 1;
            break;
        }
        if (length > 63)
            return "compressed or invalid label in the question";
        total += length + 1;
        if (total > 254)
            return "question name longer than 255 bytes";
        off += length + 1;
    }
    if (off + 4 > n)
        return "question type/class missing";
    *out = off + 4;
    return NULL;
}

static const char *rr_end_c(const unsigned char *m, Py_ssize_t n, Py_ssize_t off, Py_ssize_t *end,
                            Py_ssize_t *fixed, unsigned int *rtype)
{
    for (;;) {  /* name_end */
        if (off >= n)
            return "name runs past the end of the message";
        unsigned int length = m[off];
        if (length == 0) {
            off += 1;
            break;
        }
        if ((length & 0xC0) == 0xC0) {
            if (off + 2 > n)
                return "truncated compression pointer";
            off += 2;
            break;
        }
        if (length & 0xC0)
            return "unknown label type";
        off += length + 1;
    }
    if (off + 10 > n)
        return "resource record header truncated";
    *fixed = off;
    *rtype = (unsigned int)m[off] << 8 | m[off + 1];
    *end = off + 10 + ((Py_ssize_t)m[off + 8] << 8 | m[off + 9]);
    if (*end > n)
        return "resource record data truncated";
    return NULL;
}

static PyObject *wire_error(const char *why)
{
    PyErr_SetString(PyExc_ValueError, why);
    return NULL;
}

#define U16(m, o) ((unsigned int)(m)[o] << 8 | (m)[(o) + 1])
#define U32(m, o) ((unsigned long)(m)[o] << 24 | (unsigned long)(m)[(o) + 1] << 16 | \
                   (unsigned long)(m)[(o) + 2] << 8 | (m)[(o) + 3])

/* scan_response(msg, full) -> the fields of wire.ResponseScan, in order. */
static PyObject *scan_response(PyObject *module, PyObject *args)
{
    Py_buffer view;
    int full;
    if (!PyArg_ParseTuple(args, "y*p:scan_response", &view, &full))
        return NULL;
    const unsigned char *m = view.buf;
    Py_ssize_t n = view.len, qend = 0, off, end, fixed;
    PyObject *ttls = NULL, *result = NULL;
    const char *why = NULL;
    if (n < HEADER) {
        why = "response shorter than a header";
        goto done;
    }
    long an = U16(m, 6), ns = U16(m, 8), ar = U16(m, 10);
    if (U16(m, 4) != 1) {
        why = "response must echo exactly one question";
        goto done;
    }
    if ((why = question_end_c(m, n, HEADER, &qend)) != NULL)
        goto done;
    long rcode = m[3] & 0x0F, opt_start = -1, opt_end = -1, soa_ttl = -1, soa_min = -1;
    Py_ssize_t answer_end = an == 0 ? qend : -1;
    long count = an + ns + ar;
    if (!full)
        count = (rcode == 0 && an > 0) ? an : an + ns;
    if ((ttls = PyList_New(0)) == NULL)
        goto done;
    off = qend;
    for (long i = 0; i < count; i++) {
        Py_ssize_t start = off;
        unsigned int rtype;
        if ((why = rr_end_c(m, n, off, &end, &fixed, &rtype)) != NULL)
            goto done;
        off = end;
        if (rtype == 41) {  /* OPT */
            if (i < an + ns || opt_start >= 0) {
                why = "misplaced or duplicate OPT record";
                goto done;
            }
            opt_start = (long)start;
            opt_end = (long)off;
            rcode |= (long)m[fixed + 4] << 4;
            continue;
        }
        PyObject *o = PyLong_FromSsize_t(fixed + 4);
        if (o == NULL || PyList_Append(ttls, o) < 0) {
            Py_XDECREF(o);
            goto done;
        }
        Py_DECREF(o);
        if (i == an - 1)
            answer_end = off;
        if (rtype == 6 && an <= i && i < an + ns && soa_ttl < 0) {  /* the first SOA of the authority */
            soa_ttl = (long)(fixed + 4);
            soa_min = (long)U32(m, off - 4);
        }
    }
    if (full && off != n) {
        why = "trailing bytes after the last record";
        goto done;
    }
    result = Py_BuildValue("lnlllOllllnn", rcode, qend, an, ns, ar, ttls, opt_start, opt_end, soa_ttl,
                           soa_min, answer_end, off);
done:
    PyBuffer_Release(&view);
    if (result == NULL && why != NULL && !PyErr_Occurred())
        wire_error(why);
    Py_XDECREF(ttls);
    return result;
}

/* parse_query(msg) -> (qend, qtype, qclass, edns, udp_size, do, edns_version): wire.Query's fields. */
static PyObject *parse_query(PyObject *module, PyObject *args)
{
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*:parse_query", &view))
        return NULL;
    const unsigned char *m = view.buf;
    Py_ssize_t n = view.len, qend = 0, off, end, fixed;
    const char *why = NULL;
    PyObject *result = NULL;
    int edns = 0, dnssec_ok = 0;
    long udp_size = 512, version = 0;
    if (n < HEADER) {
        why = "query shorter than a header";
        goto done;
    }
    long an = U16(m, 6), ns = U16(m, 8), ar = U16(m, 10);
    if (U16(m, 4) != 1) {
        why = "query must carry exactly one question";
        goto done;
    }
    if ((why = question_end_c(m, n, HEADER, &qend)) != NULL)
        goto done;
    off = qend;
    unsigned int rtype;
    for (long i = 0; i < an + ns; i++) {
        if ((why = rr_end_c(m, n, off, &end, &fixed, &rtype)) != NULL)
            goto done;
        off = end;
    }
    for (long i = 0; i < ar; i++) {
        Py_ssize_t start = off;
        if ((why = rr_end_c(m, n, off, &end, &fixed, &rtype)) != NULL)
            goto done;
        off = end;
        if (rtype == 41) {
            if (edns || fixed != start + 1) {
                why = "more than one OPT record, or OPT with a non-root name";
                goto done;
            }
            long size = U16(m, fixed + 2);
            unsigned long ttl = U32(m, fixed + 4);
            edns = 1;
            udp_size = size > 512 ? size : 512;
            version = (long)((ttl >> 16) & 0xFF);
            dnssec_ok = (ttl & 0x8000) != 0;
        }
    }
    if (off != n) {
        why = "trailing bytes after the last record";
        goto done;
    }
    result = Py_BuildValue("nIINlNl", qend, U16(m, qend - 4), U16(m, qend - 2), PyBool_FromLong(edns), udp_size,
                           PyBool_FromLong(dnssec_ok), version);
done:
    PyBuffer_Release(&view);
    if (result == NULL && why != NULL && !PyErr_Occurred())
        wire_error(why);
    return result;
}

/* cache_key(msg, qend, edns, udp_size, do, tcp) -> bytes: heimdall/cachekey.py's cache_key for a
 * query parse_query accepted (qend past its question), built in one allocation: in Python the
 * slices, lower(), our OPT record and five concatenations cost every miss ~10,000 instructions.
 * Its Python twin (cachekey.py_cache_key) is the reference tests/test_wire_props.py holds it to. */
static int is_letter(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static PyObject *cache_key(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "cache_key(msg: bytes, qend, edns, udp_size, do, tcp)");
        return NULL;
    }
    const unsigned char *m = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t qend = PyLong_AsSsize_t(args[1]);
    if (qend == -1 && PyErr_Occurred())
        return NULL;
    long udp_size = PyLong_AsLong(args[3]);
    if (udp_size == -1 && PyErr_Occurred())
        return NULL;
    int edns = PyObject_IsTrue(args[2]), dnssec_ok = PyObject_IsTrue(args[4]), tcp = PyObject_IsTrue(args[5]);
    if (edns < 0 || dnssec_ok < 0 || tcp < 0)
        return NULL;
    if (qend < HEADER + 4 || qend > n) {
        PyErr_SetString(PyExc_ValueError, "cache_key: qend outside the message");
        return NULL;
    }
    unsigned char outside[17];  /* flags, type and class, our OPT: every byte of the key but the name */
    Py_ssize_t n_out = 0;
    outside[n_out++] = m[2] & 0x01;         /* RD */
    outside[n_out++] = m[3] & 0x30;         /* AD | CD */
    memcpy(outside + n_out, m + qend - 4, 4);
    n_out += 4;
    if (edns) {
        long size = udp_size >= 1232 ? 1232 : 512;  /* wire.size_class */
        const unsigned char opt[11] = {0, 0, 41, (unsigned char)(size >> 8), (unsigned char)(size & 0xFF),
                                       0, 0, dnssec_ok ? 0x80 : 0, 0, 0, 0};
        memcpy(outside + n_out, opt, sizeof opt);
        n_out += sizeof opt;
    }
    int prefix = 0;
    if (tcp)
        prefix = 'T';
    else
        for (Py_ssize_t i = 0; i < n_out; i++)
            if (is_letter(outside[i])) {
                prefix = 'X';
                break;
            }
    Py_ssize_t name_len = qend - 4 - HEADER;
    PyObject *key = PyBytes_FromStringAndSize(NULL, (prefix ? 1 : 0) + n_out + 8 + name_len);
    if (key == NULL)
        return NULL;
    unsigned char *k = (unsigned char *)PyBytes_AS_STRING(key);
    if (prefix)
        *k++ = (unsigned char)prefix;
    *k++ = outside[0];
    *k++ = outside[1];
    const unsigned char counts[8] = {0, 1, 0, 0, 0, 0, 0, edns ? 1 : 0};
    memcpy(k, counts, 8);
    k += 8;
    for (Py_ssize_t i = 0; i < name_len; i++) {
        unsigned char c = m[HEADER + i];
        *k++ = (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
    }
    memcpy(k, outside + 2, n_out - 2);
    return key;
}

/* entry_parts(response, client, qend, limit, min_ttl, max_ttl, negative_cap, do, opt)
 *   -> (head, tail, offsets, ttl, rcode) | None
 * heimdall/cache.py's build_entry up to the Entry, for the answers every miss gets: a minimal walk
 * (scan_response with full=False), bailiwick.clean's fast checks, the TTL clamp and the entry's
 * bytes. None whenever anything is not plain (a malformed message, a record the fast checks cannot
 * vouch for, an unusual bound): the Python twin (cache.py_entry_parts) then does all of it,
 * errors and bailiwick stripping included. In Python these steps cost a miss ~30,000 instructions;
 * tests/test_wire_props.py holds the two to the same parts. */
#define PARTS_MAX 256  /* records in the kept sections; more goes to the Python twin */

static int label_start(const unsigned char *m, Py_ssize_t target)
{
    /* target is a label boundary of the question name (its terminating zero included) */
    Py_ssize_t off = HEADER;
    for (;;) {
        if (off == target)
            return 1;
        if (m[off] == 0 || off > target)
            return 0;
        off += m[off] + 1;
    }
}

static PyObject *entry_parts(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) || !PyBytes_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError, "entry_parts(response: bytes, client: bytes, qend, limit, min_ttl, "
                        "max_ttl, negative_cap, do, opt: bytes)");
        return NULL;
    }
    const unsigned char *m = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *c = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]), qend_client = PyLong_AsSsize_t(args[2]);
    long long limit = PyLong_AsLongLong(args[3]), min_ttl = PyLong_AsLongLong(args[4]);
    long long max_ttl = PyLong_AsLongLong(args[5]), cap = PyLong_AsLongLong(args[6]);
    int dnssec_ok = PyObject_IsTrue(args[7]);
    if (PyErr_Occurred() || dnssec_ok < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *opt = args[8];
    Py_ssize_t opt_len = PyBytes_GET_SIZE(opt);
    if (min_ttl < 0 || min_ttl > 0x7FFFFFFF || max_ttl < 0 || max_ttl > 0x7FFFFFFF || cap < 0 || cap > 0x7FFFFFFF ||
        PyBytes_GET_SIZE(args[1]) < HEADER || n < HEADER || U16(m, 4) != 1)
        Py_RETURN_NONE;
    Py_ssize_t qend, end, fixed, off;
    if (question_end_c(m, n, HEADER, &qend) != NULL || qend != qend_client)
        Py_RETURN_NONE;
    long rcode = m[3] & 0x0F, an = U16(m, 6), ns = U16(m, 8);
    int positive = rcode == 0 && an > 0;
    if (!positive && an != 0)  /* a negative answer with records in its answer: the full check */
        Py_RETURN_NONE;
    long count = positive ? an : ns;
    if (count > PARTS_MAX)
        Py_RETURN_NONE;
    Py_ssize_t ttl_offs[PARTS_MAX], chain[PARTS_MAX + 1];
    int n_chain = 0, zone = -1;
    Py_ssize_t soa_off = -1;
    unsigned long soa_min = 0;
    chain[n_chain++] = HEADER;
    off = qend;
    for (long i = 0; i < count; i++) {
        unsigned int rtype;
        if (rr_end_c(m, n, off, &end, &fixed, &rtype) != NULL || rtype == 41)
            Py_RETURN_NONE;  /* malformed, or an OPT where none may be */
        unsigned int b0 = m[off];
        if (b0 < 0xC0)  /* an owner written out: the full check */
            Py_RETURN_NONE;
        Py_ssize_t target = (Py_ssize_t)(b0 & 0x3F) << 8 | m[off + 1];
        if (positive) {  /* a pointer to the question name or to a CNAME target on the chain */
            int known = 0;
            for (int k = 0; k < n_chain && !known; k++)
                known = chain[k] == target;
            if (!known || rtype == 39)
                Py_RETURN_NONE;
            if (rtype == 5)
                chain[n_chain++] = fixed + 10;
        } else {  /* a pointer to a label boundary of the question name, one zone for every SOA */
            if (!label_start(m, target))
                Py_RETURN_NONE;
            if (rtype == 6) {
                if (zone < 0)
                    zone = (int)target;
                else if (target != zone)
                    Py_RETURN_NONE;
                if (soa_off < 0) {
                    soa_off = fixed + 4;
                    soa_min = U32(m, end - 4);
                }
            }
            chain[i] = target;  /* the owners, checked against the zone below */
        }
        ttl_offs[i] = fixed + 4;
        off = end;
    }
    if (!positive) {
        if (zone < 0)
            Py_RETURN_NONE;
        for (long i = 0; i < count; i++)
            if (chain[i] > zone)
                Py_RETURN_NONE;
    }
    Py_ssize_t rec_len = off - qend;
    PyObject *tail = PyBytes_FromStringAndSize(NULL, rec_len + opt_len);
    if (tail == NULL)
        return NULL;
    unsigned char *t = (unsigned char *)PyBytes_AS_STRING(tail);
    memcpy(t, m + qend, rec_len);
    memcpy(t + rec_len, PyBytes_AS_STRING(opt), opt_len);
    long long ttl = -1;
    if (rcode == 0 || rcode == 3) {  /* cache.clamp_ttls */
        long long least = -1;
        for (long i = 0; i < count; i++) {
            unsigned char *p = t + ttl_offs[i] - qend;
            long long v = (long long)U32(p, 0);
            if (v > 0x7FFFFFFF)
                v = 0;
            v = v > max_ttl ? max_ttl : (v < min_ttl ? min_ttl : v);
            p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8);
            p[3] = (unsigned char)v;
            if (least < 0 || v < least)
                least = v;
        }
        if (positive)
            ttl = least;
        else if (soa_off >= 0) {
            long long soa = (long long)U32(t + soa_off - qend, 0);
            if (soa > (long long)soa_min)
                soa = (long long)soa_min;
            soa = soa < max_ttl ? soa : max_ttl;
            soa = soa > min_ttl ? soa : min_ttl;
            ttl = soa < cap ? soa : cap;
            for (long i = 0; i < count; i++) {
                unsigned char *p = t + ttl_offs[i] - qend;
                if ((long long)U32(p, 0) > ttl || ttl_offs[i] == soa_off) {
                    p[0] = (unsigned char)(ttl >> 24), p[1] = (unsigned char)(ttl >> 16);
                    p[2] = (unsigned char)(ttl >> 8), p[3] = (unsigned char)ttl;
                }
            }
        }
    }
    unsigned char head[10] = {0x80 | (c[2] & 0x01), 0x80 | (c[3] & 0x10) | (unsigned char)rcode, 0, 1, 0, 0, 0, 0,
                              0, opt_len ? 1 : 0};
    if (((c[3] & 0x20) || dnssec_ok) && (m[3] & 0x20))
        head[1] |= 0x20;
    PyObject *offsets;
    if (qend + rec_len + opt_len > limit) {  /* does not fit: an empty TC=1 reply */
        head[0] |= 0x02;
        Py_DECREF(tail);
        Py_INCREF(opt);
        tail = opt;
        offsets = PyTuple_New(0);
    } else {
        head[4] = (unsigned char)(an >> 8), head[5] = (unsigned char)an;
        if (!positive)
            head[6] = (unsigned char)(ns >> 8), head[7] = (unsigned char)ns;
        offsets = PyTuple_New(count);
        for (long i = 0; offsets != NULL && i < count; i++) {
            PyObject *o = PyLong_FromSsize_t(ttl_offs[i] - qend);
            if (o == NULL) {
                Py_CLEAR(offsets);
                break;
            }
            PyTuple_SET_ITEM(offsets, i, o);
        }
    }
    if (offsets == NULL) {
        Py_DECREF(tail);
        return NULL;
    }
    return Py_BuildValue("y#NNLl", (const char *)head, (Py_ssize_t)10, tail, offsets, ttl, rcode);
}

/* suffix_in(qname, names, skip_tld) -> int: blocklist.py_suffix_in, the blocklist's walk on every
 * miss: the offset of qname's first suffix (at a label start, the root alone never) that is in the
 * frozenset names, or -1; with skip_tld the last label is not looked up either. The Python loop cost
 * a miss ~3,000 instructions; tests/test_wire_props.py holds the two to the same offsets. */
static PyObject *suffix_in(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyAnySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "suffix_in(qname: bytes, names: frozenset, skip_tld)");
        return NULL;
    }
    const unsigned char *q = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]), end = len - 1, i = 0;
    int skip_tld = PyObject_IsTrue(args[2]);
    if (skip_tld < 0)
        return NULL;
    while (i < end) {
        Py_ssize_t next = i + q[i] + 1;
        if (skip_tld && next >= end)
            break;
        PyObject *suffix = PyBytes_FromStringAndSize((const char *)q + i, len - i);
        if (suffix == NULL)
            return NULL;
        int found = PySet_Contains(args[1], suffix);
        Py_DECREF(suffix);
        if (found < 0)
            return NULL;
        if (found)
            return PyLong_FromSsize_t(i);
        i = next;
    }
    return PyLong_FromLong(-1);
}

/* reply_matches(reply, qid, question, exact) -> bool: wire.py_reply_matches (RFC 5452: ID, QR and the
 * question, case-blind or, with 0x20, exact), which every upstream reply passes; in Python its
 * slices, struct calls and lower() cost a miss ~2,500 instructions. Held to its twin by
 * tests/test_wire_props.py. */
static PyObject *reply_matches(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "reply_matches(reply: bytes, qid, question: bytes, exact)");
        return NULL;
    }
    const unsigned char *r = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *q = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]), qlen = PyBytes_GET_SIZE(args[2]);
    long qid = PyLong_AsLong(args[1]);
    if (qid == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();  /* no 16-bit ID is that large */
        qid = -1;
    }
    int exact = PyObject_IsTrue(args[3]);
    if (exact < 0)
        return NULL;
    if (n < HEADER + qlen || !(r[2] & 0x80) || (long)U16(r, 0) != qid || U16(r, 4) != 1)
        Py_RETURN_FALSE;
    if (exact)
        return PyBool_FromLong(memcmp(r + HEADER, q, qlen) == 0);
    for (Py_ssize_t i = 0; i < qlen; i++) {
        unsigned char a = r[HEADER + i], b = q[i];
        a = (a >= 'A' && a <= 'Z') ? (unsigned char)(a + 32) : a;
        b = (b >= 'A' && b <= 'Z') ? (unsigned char)(b + 32) : b;
        if (a != b)
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef module_methods[] = {
    {"recv_burst", (PyCFunction)(void (*)(void))recv_burst, METH_FASTCALL,
     "recv_burst(fd, limit) -> list[bytes]: the datagrams waiting on a non-blocking socket, at most limit"},
    {"cache_key", (PyCFunction)(void (*)(void))cache_key, METH_FASTCALL,
     "cache_key(msg, qend, edns, udp_size, do, tcp) -> bytes: cachekey.cache_key for a parsed query"},
    {"scan_response", scan_response, METH_VARARGS,
     "scan_response(msg, full) -> tuple: wire.ResponseScan's fields (ValueError: malformed)"},
    {"entry_parts", (PyCFunction)(void (*)(void))entry_parts, METH_FASTCALL,
     "entry_parts(response, client, qend, limit, min_ttl, max_ttl, negative_cap, do, opt) -> "
     "(head, tail, offsets, ttl, rcode) | None: cache.build_entry's parts for a plain answer"},
    {"suffix_in", (PyCFunction)(void (*)(void))suffix_in, METH_FASTCALL,
     "suffix_in(qname, names, skip_tld) -> int: the offset of qname's first suffix in names, or -1"},
    {"reply_matches", (PyCFunction)(void (*)(void))reply_matches, METH_FASTCALL,
     "reply_matches(reply, qid, question, exact) -> bool: wire.reply_matches (RFC 5452)"},
    {"huffman_decode", huffman_decode, METH_O,
     "huffman_decode(data) -> bytes: an HPACK Huffman-coded string decoded (ValueError: invalid)"},
    {"neutral_fields", neutral_fields, METH_O,
     "neutral_fields(block) -> list[bytes] | None: headerblock.py_neutral_fields"},
    {"parse_query", parse_query, METH_VARARGS,
     "parse_query(msg) -> (qend, qtype, qclass, edns, udp_size, do, edns_version) (ValueError: malformed)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "heimdall._hotpath", "The UDP cache-hit path in C (see _hotpath.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__hotpath(void)
{
    struct { PyObject **slot; const char *name; } names[] = {
        {&s_head, "head"}, {&s_tail, "tail"}, {&s_qend, "qend"}, {&s_aged, "aged"}, {&s_lid, "lid"}, {&s_mark, "mark"},
        {&s_refresh, "refresh"}, {&s_hits_fast, "hits_fast"}, {&s_udp_wakeups, "udp_wakeups"},
        {&s_udp_datagrams, "udp_datagrams"}, {&s_formerr, "formerr"}, {&s_dropped, "dropped"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    if (PyType_Ready(&HotPathType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "HotPath", (PyObject *)&HotPathType) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 || PyModule_AddIntConstant(m, "BUFSIZE", BUFSIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
