/*
 * collectors._scan: skip the bulk of a pcap file at C speed.
 *
 * Most frames on a hospital link can carry no Observation (TLS application data, ACKs, SMB,
 * RTP...). The pure-Python decoder recognises them with one regex match per frame
 * (collectors/_decoder.py: _boring_pattern); this module applies the very same rule, frame by
 * frame, and hands back the first frame that Python must decode in full. It reads a handful of
 * header bytes, every read bounds-checked against the frame's end; it parses no protocol and
 * keeps nothing. The decoder falls back to the Python loop when this module is not built, and
 * the tests check that both paths decode every capture of the corpus identically. Two walks
 * share the rule: pcap records (scan_pcap) and pcapng Enhanced Packet Blocks (scan_pcapng).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_FRAME (1 << 18)

/* Ports that select a parser; must equal UDP_PORTS / TCP_NAME_PORTS in _decoder.py
 * (the tests compare them). */
static const uint16_t UDP_PORTS[] = {53, 5353, 5355, 137, 67, 68, 1900, 161, 162};
static const uint16_t TCP_NAME_PORTS[] = {53, 5355};

/* First payload bytes worth a look; filled from Python (init_start_bytes) from _TCP_START_BYTES. */
static unsigned char tcp_start[256];

static inline int in_list(uint16_t port, const uint16_t *list, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (list[i] == port) return 1;
    }
    return 0;
}

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* 1: the frame [f, end) can carry no Observation; 2: the same, a TCP segment (its ports are at
 * *ports); 0: decode it in full, and when it is plain IPv4 TCP or UDP, *l4 is where its
 * transport header starts (Python can skip re-reading the link and network headers).
 * Mirrors _boring_pattern() exactly. */
static int boring(const unsigned char *b, Py_ssize_t f, Py_ssize_t end, uint32_t *ports, Py_ssize_t *l4out) {
    Py_ssize_t p = f + 12;
    if (p + 2 > end) return 0;
    if (b[p] == 0x81 && b[p + 1] == 0x00) { /* one 802.1Q tag */
        p += 4;
        if (p + 2 > end) return 0;
    }
    if (b[p] != 0x08 || b[p + 1] != 0x00) return 0;
    Py_ssize_t ip = p + 2;
    if (ip + 10 > end) return 0;  /* up to and including the protocol byte */
    if (b[ip] != 0x45) return 0;
    unsigned char flags = b[ip + 6];
    if ((flags & 0x3F) != 0 || b[ip + 7] != 0) return 0;  /* MF clear, offset zero */
    unsigned char proto = b[ip + 9];
    Py_ssize_t l4 = ip + 20;
    if (proto == 6) {
        if (l4 + 13 > end) return 0;  /* ports, seq, ack, data offset */
        uint16_t sport = be16(b + l4), dport = be16(b + l4 + 2);
        if (in_list(sport, TCP_NAME_PORTS, 2) || in_list(dport, TCP_NAME_PORTS, 2)) { *l4out = l4; return 0; }
        unsigned int words = b[l4 + 12] >> 4;
        if (words < 5) return 0;
        Py_ssize_t payload = l4 + 4 * (Py_ssize_t)words;
        if (payload > end) return 0;
        if (payload < end && tcp_start[b[payload]]) { *l4out = l4; return 0; }
        *ports = ((uint32_t)sport << 16) | dport;
        return 2;
    }
    if (proto == 17) {
        if (l4 + 8 > end) return 0;
        if (in_list(be16(b + l4), UDP_PORTS, 9) || in_list(be16(b + l4 + 2), UDP_PORTS, 9)) { *l4out = l4; return 0; }
        if (l4 + 8 < end && (b[l4 + 8] & 0xC0) == 0xC0) { *l4out = l4; return 0; }  /* a QUIC long header */
        return 1;
    }
    return 1;  /* any other protocol: nothing to read */
}

/* 1: the TCP ports (sport << 16 | dport) are a key of port_pairs (a stream start being
 * reassembled: its boring segments must be decoded too); 0: not; -1: an exception is set. */
static int known_pair(PyObject *port_pairs, uint32_t ports) {
    PyObject *key = PyLong_FromUnsignedLong(ports);
    if (key == NULL) return -1;
    int found = PyDict_Contains(port_pairs, key);
    Py_DECREF(key);
    return found;
}

/* scan_pcap(buf, pos, limit, port_pairs) -> (pos, skipped, hit, l4)
 *
 * Walk little-endian pcap records from pos; skip boring Ethernet frames; stop at the first frame
 * to decode (hit = its record offset) or at the first incomplete record (hit = -1; pos = its
 * offset). A boring TCP segment whose (sport << 16 | dport) is a key of port_pairs continues a
 * stream start being reassembled: it is a hit too. l4 > 0 says the hit is plain IPv4 TCP/UDP
 * with its transport header there (see boring()). */
static PyObject *scan_pcap(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, limit;
    PyObject *port_pairs;
    if (!PyArg_ParseTuple(args, "y*nnO!", &view, &pos, &limit, &PyDict_Type, &port_pairs)) return NULL;
    if (limit > view.len || pos < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan_pcap: bounds outside the buffer");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)view.buf;
    Py_ssize_t skipped = 0, hit = -1, l4 = 0;
    int check_pairs = PyDict_GET_SIZE(port_pairs) > 0;
    while (pos + 16 <= limit) {
        Py_ssize_t caplen = (Py_ssize_t)le32(b + pos + 8);
        Py_ssize_t frame = pos + 16;
        if (caplen > MAX_FRAME) { hit = pos; l4 = 0; break; }  /* let Python report the corrupt record */
        Py_ssize_t end = frame + caplen;
        if (end > limit) break;
        uint32_t ports = 0;
        l4 = 0;
        int verdict = boring(b, frame, end, &ports, &l4);
        if (verdict == 2 && check_pairs) {
            int found = known_pair(port_pairs, ports);
            if (found < 0) { PyBuffer_Release(&view); return NULL; }
            if (found) {
                verdict = 0;
                l4 = frame + (b[frame + 12] == 0x81 ? 38 : 34);
            }
        }
        if (verdict == 0) { hit = pos; break; }
        skipped++;
        pos = end;
    }
    PyBuffer_Release(&view);
    if (hit < 0) l4 = 0;
    return Py_BuildValue("nnnn", pos, skipped, hit, l4);
}

/* scan_pcapng(buf, pos, limit, port_pairs, ethernet) -> (pos, skipped, hit, l4)
 *
 * The same walk over the blocks of a little-endian pcapng section: skip the Enhanced Packet
 * Blocks whose interface is Ethernet (ethernet[interface] != 0) and whose frame is boring;
 * stop at any other block (section and interface headers, other packet blocks, a length or an
 * interface the caller must check: it raises the format errors) with hit = its offset, or at
 * the first block not complete in [pos, limit) (hit = -1; pos = its offset). Skips a block
 * only where the Python reader accepts it (collectors._capture.PcapngReader). */
#define MAX_BLOCK ((1 << 18) + 64)

static PyObject *scan_pcapng(PyObject *self, PyObject *args) {
    Py_buffer view, ethernet;
    Py_ssize_t pos, limit;
    PyObject *port_pairs;
    if (!PyArg_ParseTuple(args, "y*nnO!y*", &view, &pos, &limit, &PyDict_Type, &port_pairs, &ethernet))
        return NULL;
    if (limit > view.len || pos < 0) {
        PyBuffer_Release(&view);
        PyBuffer_Release(&ethernet);
        PyErr_SetString(PyExc_ValueError, "scan_pcapng: bounds outside the buffer");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)view.buf;
    const unsigned char *eth = (const unsigned char *)ethernet.buf;
    Py_ssize_t skipped = 0, hit = -1, l4 = 0;
    int check_pairs = PyDict_GET_SIZE(port_pairs) > 0;
    while (pos + 12 <= limit) {
        uint32_t type = le32(b + pos);
        Py_ssize_t length = (Py_ssize_t)le32(b + pos + 4);
        if (type != 6 || length < 32 || (length & 3) != 0 || length > MAX_BLOCK) { hit = pos; break; }
        if (pos + length > limit) break;
        uint32_t interface = le32(b + pos + 8);
        Py_ssize_t caplen = (Py_ssize_t)le32(b + pos + 20);
        if ((Py_ssize_t)interface >= ethernet.len || !eth[interface] || caplen > length - 32) { hit = pos; break; }
        Py_ssize_t frame = pos + 28;
        uint32_t ports = 0;
        l4 = 0;
        int verdict = boring(b, frame, frame + caplen, &ports, &l4);
        if (verdict == 2 && check_pairs) {
            int found = known_pair(port_pairs, ports);
            if (found < 0) { PyBuffer_Release(&view); PyBuffer_Release(&ethernet); return NULL; }
            if (found) verdict = 0;
        }
        if (verdict == 0) { hit = pos; break; }
        skipped++;
        pos += length;
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&ethernet);
    return Py_BuildValue("nnnn", pos, skipped, hit, hit < 0 ? (Py_ssize_t)0 : l4);
}

/* init_start_bytes(bytes): the set of first TCP payload bytes worth a look. */
static PyObject *init_start_bytes(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    memset(tcp_start, 0, sizeof(tcp_start));
    for (Py_ssize_t i = 0; i < view.len; i++) tcp_start[((const unsigned char *)view.buf)[i]] = 1;
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *ports_used(PyObject *self, PyObject *unused) {
    PyObject *udp = PyFrozenSet_New(NULL), *tcp = PyFrozenSet_New(NULL);
    if (udp == NULL || tcp == NULL) { Py_XDECREF(udp); Py_XDECREF(tcp); return NULL; }
    for (size_t i = 0; i < sizeof(UDP_PORTS) / sizeof(UDP_PORTS[0]); i++) {
        PyObject *n = PyLong_FromLong(UDP_PORTS[i]);
        if (n == NULL || PySet_Add(udp, n) < 0) { Py_XDECREF(n); Py_DECREF(udp); Py_DECREF(tcp); return NULL; }
        Py_DECREF(n);
    }
    for (size_t i = 0; i < sizeof(TCP_NAME_PORTS) / sizeof(TCP_NAME_PORTS[0]); i++) {
        PyObject *n = PyLong_FromLong(TCP_NAME_PORTS[i]);
        if (n == NULL || PySet_Add(tcp, n) < 0) { Py_XDECREF(n); Py_DECREF(udp); Py_DECREF(tcp); return NULL; }
        Py_DECREF(n);
    }
    return Py_BuildValue("NN", udp, tcp);
}

static PyMethodDef methods[] = {
    {"scan_pcap", scan_pcap, METH_VARARGS, "Skip boring pcap records; return (pos, skipped, hit, l4)."},
    {"scan_pcapng", scan_pcapng, METH_VARARGS, "Skip boring pcapng packet blocks; return (pos, skipped, hit, l4)."},
    {"init_start_bytes", init_start_bytes, METH_O, "Set the first TCP payload bytes worth a look."},
    {"ports_used", ports_used, METH_NOARGS, "The (UDP, TCP) port sets compiled in."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "collectors._scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
