/*
 * The two walks of HPACK (RFC 7541) a DoH server makes for every request, in C: a GET carries
 * its DNS query base64url-encoded in :path, a new one with every request, and the walks were
 * most of a DoH cache hit's header work in Python.
 *
 * huffman_decode: the Huffman code (5.2 and Appendix B), decoding only, as a walk down the
 * code's tree, built once from the RFC's table. The hpack library decodes a table step per
 * 4 bits in Python (~15 us for a GET's path; here 0.65 us).
 *
 * neutral_fields: a header block split into its fields when decoding it leaves the dynamic
 * table as it was (heimdall/headerblock.py explains why that matters), by their prefixes alone.
 *
 * heimdall/headerblock.py calls both through heimdall._hotpath and has their twins (hpack's
 * decoder and py_neutral_fields) for when the extension is not built; they are tested equal on
 * every input, valid or not (tests/test_headerblock_props.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

PyObject *huffman_decode(PyObject *module, PyObject *arg);
PyObject *neutral_fields(PyObject *module, PyObject *arg);

#define SYMBOLS 257     /* 256 octets and EOS */
#define EOS 256

static const uint32_t CODES[SYMBOLS] = {
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
    0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
    0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
    0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
    0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
    0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
    0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
    0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
    0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
    0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
    0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
    0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
    0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
    0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
    0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
    0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
    0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
    0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
    0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
    0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
    0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
    0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
    0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
    0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
    0x3fffffff,
};
static const uint8_t LENGTHS[SYMBOLS] = {
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
};

/* The code's tree: node 0 is the root; a child >= 0 is a node, < 0 is the leaf of symbol -(child + 1). */
static int16_t tree[SYMBOLS][2];
static int built;

static void build_tree(void)
{
    int nodes = 1;
    memset(tree, 0, sizeof tree);
    for (int sym = 0; sym < SYMBOLS; sym++) {
        int node = 0;
        for (int bit = LENGTHS[sym] - 1; bit > 0; bit--) {
            int b = (CODES[sym] >> bit) & 1;
            if (tree[node][b] == 0)
                tree[node][b] = (int16_t)nodes++;
            node = tree[node][b];
        }
        tree[node][CODES[sym] & 1] = (int16_t)(-(sym + 1));
    }
    built = 1;
}

PyObject *huffman_decode(PyObject *module, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    if (!built)
        build_tree();
    const unsigned char *data = in.buf;
    Py_ssize_t n = in.len;
    /* the shortest code is 5 bits: at most 8 symbols per 5 bytes */
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 8 / 5 + 1);
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t len = 0;
    int node = 0, pending = 0, ones = 1;  /* bits read since the last symbol; all of them 1s */
    const char *error = NULL;
    for (Py_ssize_t i = 0; i < n && error == NULL; i++) {
        for (int bit = 7; bit >= 0; bit--) {
            int b = (data[i] >> bit) & 1;
            int next = tree[node][b];
            pending++;
            ones &= b;
            if (next >= 0) {
                node = next;
                continue;
            }
            if (next == -(EOS + 1)) {
                error = "EOS in a Huffman-coded string";
                break;
            }
            dst[len++] = (unsigned char)(-next - 1);
            node = 0, pending = 0, ones = 1;
        }
    }
    PyBuffer_Release(&in);
    if (error == NULL && (pending > 7 || !ones))
        error = pending > 7 ? "Huffman padding longer than 7 bits" : "Huffman padding is not EOS's prefix";
    if (error != NULL) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    if (_PyBytes_Resize(&out, len) < 0)
        return NULL;
    return out;
}

/* An HPACK integer (5.1) at b[*i] with a `prefix`-bit prefix, moved past; -1 when the block ends
 * inside it. Values past 2^56 saturate: any of them is longer than a block can be. */
static int read_int(const unsigned char *b, Py_ssize_t n, Py_ssize_t *i, int prefix, uint64_t *value)
{
    uint64_t top = (1u << prefix) - 1, v = b[*i] & top;
    (*i)++;
    if (v < top) {
        *value = v;
        return 0;
    }
    for (int shift = 0;; shift += 7) {
        if (*i >= n)
            return -1;
        unsigned char byte = b[(*i)++];
        if (shift < 56)
            v += (uint64_t)(byte & 0x7F) << shift;
        else if (byte & 0x7F)
            v = (uint64_t)1 << 62;
        if (!(byte & 0x80))
            break;
    }
    *value = v;
    return 0;
}

PyObject *neutral_fields(PyObject *module, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "neutral_fields(block: bytes)");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg), i = 0;
    PyObject *fields = PyList_New(0);
    if (fields == NULL)
        return NULL;
    while (i < n) {
        Py_ssize_t start = i;
        unsigned char byte = b[i];
        uint64_t value;
        if (byte & 0x80) {                  /* indexed (6.1) */
            if (read_int(b, n, &i, 7, &value) < 0)
                goto none;
        } else if (byte & 0xE0) {           /* adds to the table (6.2.1) or resizes it (6.3) */
            goto none;
        } else {                            /* literal not indexed (6.2.2, 6.2.3) */
            int strings = (byte & 0x0F) ? 1 : 2;  /* the name too when it is not indexed */
            if (read_int(b, n, &i, 4, &value) < 0)
                goto none;
            for (int s = 0; s < strings; s++) {
                if (i >= n || read_int(b, n, &i, 7, &value) < 0 || value > (uint64_t)(n - i))
                    goto none;
                i += (Py_ssize_t)value;
            }
        }
        PyObject *field = PyBytes_FromStringAndSize((const char *)b + start, i - start);
        if (field == NULL || PyList_Append(fields, field) < 0) {
            Py_XDECREF(field);
            Py_DECREF(fields);
            return NULL;
        }
        Py_DECREF(field);
    }
    return fields;
none:
    Py_DECREF(fields);
    Py_RETURN_NONE;
}
