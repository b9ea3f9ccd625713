/*
 * send.c - the per-record send as one CPython call (module engine._send).
 *
 * Everything about the ring lives in ring.c, compiled into engine._native by
 * cffi. A cffi call, though, releases and retakes the GIL and converts each
 * argument: on the reference machine that costs more than the append itself,
 * and Producer.send made three such calls per record (partitioner, clock,
 * append). This module is only a shim: a METH_FASTCALL function (send) and a
 * vectorcall object (Sender, which Producer.send is) that take the Python
 * arguments as they are and call engine_ring_send through a pointer that
 * engine._native hands over once (init). They keep the GIL: the append never
 * waits (engine_ring_send answers FULL instead, and the Python method waits
 * through cffi, GIL released).
 *
 *   init(send_address: int, pick_address: int, future_type: type) -> None
 *   send(route_address: int, topic: str, key: bytes | None, value: bytes | None,
 *        partition: int | None)
 *       -> future_type((topic, partition, offset, timestamp_ms, None))   on success
 *       -> int: minus a ring code                                  on failure
 *       -> None: key or value is not bytes / None, or partition not an int in
 *          range of int32 (use the general path)
 *
 *   Sender(fast: dict, general: callable)
 *       A Producer's send, as the instance attribute that shadows the Python
 *       method: a call is parsed here (send(topic, value=None, key=None,
 *       headers=None, partition=None, timestamp_ms=None)) and, when it can go
 *       through the C path (no headers, no timestamp, bytes or None key and
 *       value, a topic in ``fast``, not paused), appended with no Python frame:
 *       on the reference machine the Python method around the shim cost as
 *       much as the append itself. Anything else, and any append the ring
 *       refuses, is handed to ``general`` with the call's own arguments (the
 *       Python method, which says why or waits). ``fast`` maps a topic to
 *       (route address, route). ``paused`` (an int attribute) sends everything
 *       to ``general`` while the producer's accumulator holds records (they must
 *       not be overtaken).
 *
 *   Sender(fast, general, lock)
 *       The same for a producer that gathers records into batches (acks="all"):
 *       ``fast`` maps a topic to (route address, route, opens), opens[p] being
 *       (builder, batch) for partition p's open batch or None; ``lock`` is the
 *       accumulator's (a threading.Lock). A record goes into the open batch of
 *       its partition when the lock is free (tried, never waited for), the batch
 *       is open and has room; its future is future_type((topic, partition,
 *       index in the batch, timestamp_ms, batch)). Anything else (no open batch,
 *       full, the lock taken) goes to ``general``, which makes the next batch.
 *
 *   BatchBuilder(limit)
 *       The records of one batch, encoded as Kafka's record format into a buffer
 *       of the producer's memory (offset deltas 0.., timestamp deltas from the
 *       first record's): add(key, value, headers, header_count, timestamp_ms) ->
 *       index, or -1 when it has records and the next would take it past
 *       ``limit`` bytes (the first record is always taken); count, size,
 *       base_timestamp, max_timestamp; seal() (no add from then on); tail(k) (a
 *       builder of records k.. again, their deltas counted anew: what a batch
 *       appended part way sends again); the buffer protocol over the encoded
 *       records (read-only; no add while a view is held). The ring appends it
 *       behind a header (engine_ring_append_encoded).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <structmember.h>

#include "ring.h"

typedef int64_t (*send_fn)(engine_route_t *, int32_t, const char *, int32_t, const char *,
                           int32_t);
typedef int32_t (*pick_fn)(engine_route_t *, int32_t, const char *, int32_t, int32_t);

static send_fn ring_send = NULL;
static pick_fn route_pick = NULL;
static PyTypeObject *future_type = NULL;
static PyObject *str_acquire, *str_release; /* interned, made at module init */

static PyObject *shim_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyType_Check(args[2]) ||
        !PyType_IsSubtype((PyTypeObject *)args[2], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "init(send_address, pick_address, future_type): a tuple subtype");
        return NULL;
    }
    void *send_address = PyLong_AsVoidPtr(args[0]);
    if (!send_address) return NULL;
    void *pick_address = PyLong_AsVoidPtr(args[1]);
    if (!pick_address) return NULL;
    ring_send = (send_fn)send_address;
    route_pick = (pick_fn)pick_address;
    Py_XDECREF(future_type);
    Py_INCREF(args[2]);
    future_type = (PyTypeObject *)args[2];
    Py_RETURN_NONE;
}

static int bytes_or_none(PyObject *o, const char **data, int32_t *length) {
    if (o == Py_None) {
        *data = NULL;
        *length = -1;
        return 1;
    }
    if (!PyBytes_CheckExact(o) || PyBytes_GET_SIZE(o) > INT32_MAX) return 0;
    *data = PyBytes_AS_STRING(o);
    *length = (int32_t)PyBytes_GET_SIZE(o);
    return 1;
}

/* future_type((topic, partition, offset or index, timestamp_ms, batch)): the
 * engine.future.RecordFuture of the record just sent; batch None: decided when made,
 * at that offset; else record ``index`` of that batch. */
static PyObject *make_future(PyObject *topic, const engine_route_t *route, int64_t offset,
                             PyObject *batch) {
    PyObject *part = PyLong_FromLong(route->last_partition);
    PyObject *off = PyLong_FromLongLong(offset);
    PyObject *ts = PyLong_FromLongLong(route->last_timestamp_ms);
    PyObject *future = future_type->tp_alloc(future_type, 5);
    if (!part || !off || !ts || !future) {
        Py_XDECREF(part);
        Py_XDECREF(off);
        Py_XDECREF(ts);
        Py_XDECREF(future);
        return NULL;
    }
    Py_INCREF(topic);
    PyTuple_SET_ITEM(future, 0, topic);
    PyTuple_SET_ITEM(future, 1, part);
    PyTuple_SET_ITEM(future, 2, off);
    PyTuple_SET_ITEM(future, 3, ts);
    Py_INCREF(batch);
    PyTuple_SET_ITEM(future, 4, batch);
    return future;
}

static PyObject *shim_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !ring_send) {
        PyErr_SetString(PyExc_TypeError,
                        "send(route_address, topic, key, value, partition) after init()");
        return NULL;
    }
    engine_route_t *route = PyLong_AsVoidPtr(args[0]);
    if (!route) return NULL;
    const char *key, *value;
    int32_t key_length, value_length;
    if (!bytes_or_none(args[2], &key, &key_length) ||
        !bytes_or_none(args[3], &value, &value_length))
        Py_RETURN_NONE;
    int32_t partition = -1;
    if (args[4] != Py_None) {
        if (!PyLong_CheckExact(args[4])) Py_RETURN_NONE;
        long p = PyLong_AsLong(args[4]);
        if (p < 0 || p > INT32_MAX) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        partition = (int32_t)p;
    }
    int64_t offset = ring_send(route, partition, key, key_length, value, value_length);
    if (offset < 0) return PyLong_FromLongLong(offset);
    return make_future(args[1], route, offset, Py_None);
}

/* -- BatchBuilder: a batch's records, encoded in the producer's memory ---------- */

/* Where one record's fields lie in the builder's buffer (to make a tail again). */
typedef struct {
    uint32_t key_position;
    int32_t key_length; /* -1: null */
    uint32_t value_position;
    int32_t value_length; /* -1: null */
    uint32_t headers_position;
    int32_t headers_length;
    int32_t header_count;
    int32_t reserved;
    int64_t timestamp_ms;
} built_record_t;

typedef struct {
    PyObject_HEAD
    uint8_t *buf;
    size_t length, capacity;
    built_record_t *records;
    int32_t count, records_capacity;
    int64_t base_timestamp, max_timestamp;
    size_t limit;
    int sealed;
    Py_ssize_t exports; /* buffer views held: the buffer must not move meanwhile */
} BatchBuilder;

static PyTypeObject BatchBuilderType;

/* Grow to hold ``more`` bytes and one more record; 0, or -1 (MemoryError set). */
static int builder_reserve(BatchBuilder *b, size_t more) {
    if (b->length + more > b->capacity) {
        size_t want = b->capacity ? b->capacity : 1024;
        while (want < b->length + more) want *= 2;
        uint8_t *grown = PyMem_Realloc(b->buf, want);
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        b->buf = grown;
        b->capacity = want;
    }
    if (b->count == b->records_capacity) {
        int32_t want = b->records_capacity ? 2 * b->records_capacity : 16;
        built_record_t *grown = PyMem_Realloc(b->records, (size_t)want * sizeof(built_record_t));
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        b->records = grown;
        b->records_capacity = want;
    }
    return 0;
}

/* Add one record: its index, -1 when it does not fit (nothing set), -2 on an error
 * (exception set). Key, value and headers must not lie in this builder's buffer
 * (it may move). */
static int64_t builder_add(BatchBuilder *b, const uint8_t *key, int32_t key_length,
                           const uint8_t *value, int32_t value_length, const uint8_t *headers,
                           int32_t headers_length, int32_t header_count, int64_t ts) {
    if (b->sealed || b->exports) {
        PyErr_SetString(PyExc_BufferError, "BatchBuilder: sealed, or its buffer is in use");
        return -2;
    }
    int64_t base = b->count ? b->base_timestamp : ts;
    size_t length = engine_batch_record_length(ts - base, b->count, key_length, value_length,
                                               headers_length, header_count);
    if (b->count && b->length + length > b->limit) return -1;
    if (b->count >= INT32_MAX - 1 || b->length + length > (size_t)INT32_MAX) return -1;
    if (builder_reserve(b, length) < 0) return -2;
    uint8_t *out = b->buf + b->length;
    engine_batch_write_record(out, ts - base, b->count, key, key_length, value, value_length,
                              headers, headers_length, header_count);
    /* The fields' places in it: length, attributes, the deltas, then each field. */
    size_t kl = key_length > 0 ? (size_t)key_length : 0;
    size_t vl = value_length > 0 ? (size_t)value_length : 0;
    size_t body = 1 + engine_varlong_length(ts - base) + engine_varlong_length(b->count) +
                  engine_varlong_length(key_length) + kl + engine_varlong_length(value_length) +
                  vl + engine_varlong_length(header_count) + (size_t)headers_length;
    size_t at = engine_varlong_length((int64_t)body) + 1 + engine_varlong_length(ts - base) +
                engine_varlong_length(b->count) + engine_varlong_length(key_length);
    built_record_t *r = &b->records[b->count];
    r->key_position = (uint32_t)(b->length + at);
    r->key_length = key_length;
    at += kl + engine_varlong_length(value_length);
    r->value_position = (uint32_t)(b->length + at);
    r->value_length = value_length;
    at += vl + engine_varlong_length(header_count);
    r->headers_position = (uint32_t)(b->length + at);
    r->headers_length = headers_length;
    r->header_count = header_count;
    r->reserved = 0;
    r->timestamp_ms = ts;
    if (!b->count || ts > b->max_timestamp) b->max_timestamp = ts;
    b->base_timestamp = base;
    b->length += length;
    return b->count++;
}

static int bytes_arg(PyObject *o, const char *what, const uint8_t **data, int32_t *length) {
    if (o == Py_None) {
        *data = NULL;
        *length = -1;
        return 1;
    }
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) > INT32_MAX) {
        PyErr_Format(PyExc_TypeError, "BatchBuilder.add: %s must be bytes or None", what);
        return 0;
    }
    *data = (const uint8_t *)PyBytes_AS_STRING(o);
    *length = (int32_t)PyBytes_GET_SIZE(o);
    return 1;
}

static PyObject *builder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "n:BatchBuilder", &limit)) return NULL;
    if (limit < 1) {
        PyErr_Format(PyExc_ValueError, "BatchBuilder: limit must be >= 1: limit=%zd", limit);
        return NULL;
    }
    BatchBuilder *b = (BatchBuilder *)type->tp_alloc(type, 0);
    if (b) b->limit = (size_t)limit;
    return (PyObject *)b;
}

static void builder_dealloc(BatchBuilder *b) {
    PyMem_Free(b->buf);
    PyMem_Free(b->records);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *builder_py_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    BatchBuilder *b = (BatchBuilder *)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "add(key, value, headers, header_count, timestamp_ms)");
        return NULL;
    }
    const uint8_t *key, *value, *headers;
    int32_t key_length, value_length, headers_length;
    if (!bytes_arg(args[0], "key", &key, &key_length) ||
        !bytes_arg(args[1], "value", &value, &value_length) ||
        !bytes_arg(args[2], "headers", &headers, &headers_length))
        return NULL;
    if (headers_length < 0) headers_length = 0;
    long header_count = PyLong_AsLong(args[3]);
    long long ts = PyLong_AsLongLong(args[4]);
    if ((header_count == -1 || ts == -1) && PyErr_Occurred()) return NULL;
    if (header_count < 0 || header_count > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "BatchBuilder.add: header_count out of range");
        return NULL;
    }
    int64_t index = builder_add(b, key, key_length, value, value_length, headers,
                                headers_length, (int32_t)header_count, ts);
    if (index == -2) return NULL;
    return PyLong_FromLongLong(index);
}

static PyObject *builder_tail(PyObject *self, PyObject *arg) {
    BatchBuilder *b = (BatchBuilder *)self;
    Py_ssize_t k = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (k == -1 && PyErr_Occurred()) return NULL;
    if (k < 0 || k >= b->count) {
        PyErr_Format(PyExc_ValueError, "BatchBuilder.tail: k=%zd of %d records", k, b->count);
        return NULL;
    }
    BatchBuilder *t = (BatchBuilder *)BatchBuilderType.tp_alloc(&BatchBuilderType, 0);
    if (!t) return NULL;
    t->limit = SIZE_MAX; /* the records of one batch fit, whatever their deltas now */
    for (int32_t i = (int32_t)k; i < b->count; i++) {
        const built_record_t *r = &b->records[i];
        const uint8_t *key = r->key_length >= 0 ? b->buf + r->key_position : NULL;
        const uint8_t *value = r->value_length >= 0 ? b->buf + r->value_position : NULL;
        if (builder_add(t, key, r->key_length, value, r->value_length,
                        b->buf + r->headers_position, r->headers_length, r->header_count,
                        r->timestamp_ms) < 0) {
            Py_DECREF(t);
            return NULL;
        }
    }
    t->limit = b->limit;
    return (PyObject *)t;
}

static PyObject *builder_seal(PyObject *self, PyObject *unused) {
    ((BatchBuilder *)self)->sealed = 1;
    Py_RETURN_NONE;
}

static int builder_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    BatchBuilder *b = (BatchBuilder *)self;
    if (PyBuffer_FillInfo(view, self, b->buf ? (void *)b->buf : (void *)"", (Py_ssize_t)b->length,
                          1, flags) < 0)
        return -1;
    b->exports++;
    return 0;
}

static void builder_releasebuffer(PyObject *self, Py_buffer *view) {
    ((BatchBuilder *)self)->exports--;
}

static PyMemberDef builder_members[] = {
    {"count", T_INT, offsetof(BatchBuilder, count), READONLY, "records added"},
    {"base_timestamp", T_LONGLONG, offsetof(BatchBuilder, base_timestamp), READONLY,
     "the first record's timestamp (ms)"},
    {"max_timestamp", T_LONGLONG, offsetof(BatchBuilder, max_timestamp), READONLY,
     "the largest timestamp (ms)"},
    {"sealed", T_INT, offsetof(BatchBuilder, sealed), READONLY, "no add from now on"},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *builder_size(PyObject *self, void *unused) {
    return PyLong_FromSize_t(((BatchBuilder *)self)->length);
}

static PyGetSetDef builder_getset[] = {
    {"size", builder_size, NULL, "bytes of the encoded records", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef builder_methods[] = {
    {"add", (PyCFunction)(void (*)(void))builder_py_add, METH_FASTCALL,
     "add(key, value, headers, header_count, timestamp_ms) -> index, or -1 when full"},
    {"tail", builder_tail, METH_O, "tail(k) -> a BatchBuilder of records k.."},
    {"seal", builder_seal, METH_NOARGS, "no add from now on"},
    {NULL, NULL, 0, NULL},
};

static PyBufferProcs builder_as_buffer = {
    .bf_getbuffer = builder_getbuffer,
    .bf_releasebuffer = builder_releasebuffer,
};

static PyTypeObject BatchBuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._send.BatchBuilder",
    .tp_doc = "The records of one batch, encoded in the producer's memory (see send.c).",
    .tp_basicsize = sizeof(BatchBuilder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = builder_new,
    .tp_dealloc = (destructor)builder_dealloc,
    .tp_members = builder_members,
    .tp_getset = builder_getset,
    .tp_methods = builder_methods,
    .tp_as_buffer = &builder_as_buffer,
};

/* The fields of one record a Sender call names, in send()'s parameter order. */
enum { ARG_TOPIC, ARG_VALUE, ARG_KEY, ARG_HEADERS, ARG_PARTITION, ARG_TIMESTAMP, ARG_COUNT };
static const char *const arg_names[ARG_COUNT] = {"topic", "value", "key", "headers",
                                                 "partition", "timestamp_ms"};
static PyObject *arg_strings[ARG_COUNT]; /* interned, made at module init */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fast;    /* dict: topic -> (route address, route[, opens]) */
    PyObject *general; /* the Python send */
    PyObject *lock;    /* batches: the accumulator's lock; NULL: appends to the ring */
    int paused;
} Sender;

/* Puts the call's arguments in args_out by parameter; 0 when it must go to the
 * general path (too many, unknown or repeated names: the Python method raises). */
static int sender_parse(PyObject *const *args, size_t nargsf, PyObject *kwnames,
                        PyObject **args_out) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs > ARG_COUNT) return 0;
    for (int i = 0; i < ARG_COUNT; i++) args_out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int i = 0; i < ARG_COUNT && found < 0; i++)
            if (name == arg_strings[i]) found = i;
        for (int i = 0; i < ARG_COUNT && found < 0; i++)
            if (PyUnicode_Compare(name, arg_strings[i]) == 0) found = i;
        if (found < 0 || args_out[found]) {
            PyErr_Clear();
            return 0;
        }
        args_out[found] = args[nargs + k];
    }
    return args_out[ARG_TOPIC] != NULL;
}

/* Into the open batch of its partition (a producer that batches); NULL with no
 * exception set: the general path must take the record. */
static PyObject *sender_accumulate(Sender *self, PyObject *topic, PyObject *entry,
                                   const char *key, int32_t key_length, const char *value,
                                   int32_t value_length, int32_t partition) {
    if (PyTuple_GET_SIZE(entry) != 3 || !PyList_CheckExact(PyTuple_GET_ITEM(entry, 2)))
        return NULL;
    engine_route_t *route = PyLong_AsVoidPtr(PyTuple_GET_ITEM(entry, 0));
    if (!route) {
        PyErr_Clear();
        return NULL;
    }
    /* A record handed to the general path is placed there again: the sticky state
     * then goes back to what it was, so that the two do not count its bytes twice. */
    int32_t sticky_partition = route->sticky_partition;
    int64_t sticky_bytes = route->sticky_bytes;
    uint64_t random_state = route->random_state;
    int32_t p = route_pick(route, partition, key, key_length, value_length);
    PyObject *opens = PyTuple_GET_ITEM(entry, 2);
    PyObject *got = NULL;
    if (p >= 0 && p < PyList_GET_SIZE(opens)) {
        /* The lock is tried, never waited for: the sender holds it while it takes
         * batches. */
        got = PyObject_CallMethodOneArg(self->lock, str_acquire, Py_False);
        if (!got) return NULL;
    }
    int locked = got == Py_True;
    Py_XDECREF(got);
    if (!locked) {
        route->sticky_partition = sticky_partition;
        route->sticky_bytes = sticky_bytes;
        route->random_state = random_state;
        return NULL;
    }
    PyObject *slot = PyList_GET_ITEM(opens, p); /* borrowed, under the lock */
    PyObject *batch = NULL;
    int64_t index = -1;
    if (PyTuple_CheckExact(slot) && PyTuple_GET_SIZE(slot) == 2 &&
        Py_IS_TYPE(PyTuple_GET_ITEM(slot, 0), &BatchBuilderType)) {
        batch = PyTuple_GET_ITEM(slot, 1);
        Py_INCREF(batch);
        index = builder_add((BatchBuilder *)PyTuple_GET_ITEM(slot, 0), (const uint8_t *)key,
                            key_length, (const uint8_t *)value, value_length, NULL, 0, 0,
                            route->last_timestamp_ms);
    }
    PyObject *released = PyObject_CallMethodNoArgs(self->lock, str_release);
    if (!released || index == -2) {
        Py_XDECREF(released);
        Py_XDECREF(batch);
        if (!released) return NULL;
        PyErr_Clear(); /* sealed meanwhile: the general path places the record */
        route->sticky_partition = sticky_partition;
        route->sticky_bytes = sticky_bytes;
        route->random_state = random_state;
        return NULL;
    }
    Py_DECREF(released);
    PyObject *future = index >= 0 ? make_future(topic, route, index, batch) : NULL;
    Py_XDECREF(batch);
    if (!future && !PyErr_Occurred()) {
        route->sticky_partition = sticky_partition;
        route->sticky_bytes = sticky_bytes;
        route->random_state = random_state;
    }
    return future;
}

static PyObject *sender_call(PyObject *callable, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames) {
    Sender *self = (Sender *)callable;
    PyObject *a[ARG_COUNT];
    if ((self->paused && !self->lock) || !ring_send || !sender_parse(args, nargsf, kwnames, a) ||
        (a[ARG_HEADERS] && a[ARG_HEADERS] != Py_None) ||
        (a[ARG_TIMESTAMP] && a[ARG_TIMESTAMP] != Py_None) || !PyUnicode_CheckExact(a[ARG_TOPIC]))
        goto general;
    PyObject *entry = PyDict_GetItemWithError(self->fast, a[ARG_TOPIC]); /* borrowed */
    if (!entry) {
        if (PyErr_Occurred()) return NULL;
        goto general;
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) < 2) goto general;
    engine_route_t *route = PyLong_AsVoidPtr(PyTuple_GET_ITEM(entry, 0));
    if (!route) return NULL;
    const char *key, *value;
    int32_t key_length, value_length;
    if (!bytes_or_none(a[ARG_KEY] ? a[ARG_KEY] : Py_None, &key, &key_length) ||
        !bytes_or_none(a[ARG_VALUE] ? a[ARG_VALUE] : Py_None, &value, &value_length))
        goto general;
    int32_t partition = -1;
    if (a[ARG_PARTITION] && a[ARG_PARTITION] != Py_None) {
        if (!PyLong_CheckExact(a[ARG_PARTITION])) goto general;
        long p = PyLong_AsLong(a[ARG_PARTITION]);
        if (p < 0 || p > INT32_MAX) {
            PyErr_Clear();
            goto general;
        }
        partition = (int32_t)p;
    }
    /* A route outlives this call: the entry (and its route) is referenced here. */
    Py_INCREF(entry);
    if (self->lock) {
        PyObject *future = sender_accumulate(self, a[ARG_TOPIC], entry, key, key_length, value,
                                             value_length, partition);
        Py_DECREF(entry);
        if (future || PyErr_Occurred()) return future;
        goto general;
    }
    int64_t offset = ring_send(route, partition, key, key_length, value, value_length);
    if (offset < 0) { /* full, sealed, too large, no such partition: the general path */
        Py_DECREF(entry);
        goto general;
    }
    PyObject *future = make_future(a[ARG_TOPIC], route, offset, Py_None);
    Py_DECREF(entry);
    return future;
general:
    return PyObject_Vectorcall(self->general, args, nargsf, kwnames);
}

static PyObject *sender_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *fast, *general, *lock = Py_None;
    if (!PyArg_ParseTuple(args, "O!O|O:Sender", &PyDict_Type, &fast, &general, &lock))
        return NULL;
    if (!PyCallable_Check(general)) {
        PyErr_SetString(PyExc_TypeError,
                        "Sender(fast, general, lock=None): general must be callable");
        return NULL;
    }
    Sender *self = (Sender *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->vectorcall = sender_call;
    Py_INCREF(fast);
    self->fast = fast;
    Py_INCREF(general);
    self->general = general;
    if (lock != Py_None) {
        Py_INCREF(lock);
        self->lock = lock;
    }
    return (PyObject *)self;
}

static int sender_traverse(Sender *self, visitproc visit, void *arg) {
    Py_VISIT(self->fast);
    Py_VISIT(self->general);
    Py_VISIT(self->lock);
    return 0;
}

static int sender_clear(Sender *self) {
    Py_CLEAR(self->fast);
    Py_CLEAR(self->general);
    Py_CLEAR(self->lock);
    return 0;
}

static void sender_dealloc(Sender *self) {
    PyObject_GC_UnTrack(self);
    sender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef sender_members[] = {
    {"paused", T_INT, offsetof(Sender, paused), 0,
     "nonzero: every call goes to the general path"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._send.Sender",
    .tp_doc = "A Producer's send in C (see Producer.send for what it does).",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = sender_new,
    .tp_dealloc = (destructor)sender_dealloc,
    .tp_traverse = (traverseproc)sender_traverse,
    .tp_clear = (inquiry)sender_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Sender, vectorcall),
    .tp_members = sender_members,
};

static PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))shim_init, METH_FASTCALL, "init(send_address, future_type)"},
    {"send", (PyCFunction)(void (*)(void))shim_send, METH_FASTCALL,
     "send(route_address, topic, key, value, partition)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "engine._send", NULL, -1, methods};

PyMODINIT_FUNC PyInit__send(void) {
    for (int i = 0; i < ARG_COUNT; i++) {
        arg_strings[i] = PyUnicode_InternFromString(arg_names[i]);
        if (!arg_strings[i]) return NULL;
    }
    str_acquire = PyUnicode_InternFromString("acquire");
    str_release = PyUnicode_InternFromString("release");
    if (!str_acquire || !str_release) return NULL;
    if (PyType_Ready(&SenderType) < 0 || PyType_Ready(&BatchBuilderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0) {
        Py_DECREF(&SenderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BatchBuilderType);
    if (PyModule_AddObject(m, "BatchBuilder", (PyObject *)&BatchBuilderType) < 0) {
        Py_DECREF(&BatchBuilderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
