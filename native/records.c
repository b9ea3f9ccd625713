/*
 * records.c - the Record a consumer receives, as a C type over the chunk it came
 * from (module engine._records).
 *
 * engine_batch_decode (batch.c, reached through cffi) indexes the records of a
 * chunk of batches into engine_record_info_t rows. A poll turns the rows into
 * Records: one small object each, holding the chunk (a bytes object, shared by the
 * chunk's records) and where its fields lie in it. Nothing is copied until it is
 * read, as confluent-kafka's Message is a C object:
 *
 *   offset, timestamp, topic, partition   kept as numbers (topic shared)
 *   key, value, headers                   made on first access of any of them,
 *                                         all three at once: bytes (None for a null),
 *                                         and a list of (str, bytes) pairs made by
 *                                         decode_headers (Python; rare); no headers:
 *                                         the empty list made when headers is read
 *
 * Once made, the three are kept and the chunk is let go: a record the application
 * keeps after reading it holds its own bytes, not the chunk (a chunk is up to
 * fetch_max_bytes). A record kept without being read holds its chunk.
 *
 * A Record also behaves as the 7-tuple (topic, partition, offset, timestamp, key,
 * value, headers) it was before: indexing, len, iteration and unpacking, equality
 * with tuples and Records, hashing and pickling as that tuple. Record(...) with
 * the 7 fields makes one without a chunk.
 *
 *   build(data: bytes, infos_address: int, count: int, topic: str, partition: int,
 *         decode_headers: callable) -> list[Record]
 *
 * A row that points outside data raises ValueError (engine_batch_decode never
 * makes one).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h>

#include "batch.h"

#define RECORD_FIELDS 7

typedef struct {
    PyObject_HEAD
    PyObject *chunk;   /* bytes the lazy fields lie in; NULL once they are made */
    PyObject *topic;
    PyObject *key;     /* NULL until made */
    PyObject *value;
    PyObject *headers;
    int64_t offset;
    int64_t timestamp;
    int32_t partition;
    int32_t key_length;     /* -1: null */
    int32_t value_length;   /* -1: null */
    int32_t header_count;
    uint32_t key_position;
    uint32_t value_position;
    uint32_t headers_position;
    uint32_t headers_length;
} RecordObject;

static PyTypeObject RecordType;
static PyObject *decode_headers = NULL; /* set by build(); used to make headers */

/* bytes of data[position : position + length], None for length -1. */
static PyObject *slice(const char *data, Py_ssize_t data_length, uint32_t position,
                       int32_t length) {
    if (length == -1) Py_RETURN_NONE;
    if (length < 0 || (Py_ssize_t)position + length > data_length) {
        PyErr_Format(PyExc_ValueError,
                     "record field outside the chunk: position=%u length=%d chunk=%zd",
                     position, length, data_length);
        return NULL;
    }
    return PyBytes_FromStringAndSize(data + position, length);
}

/* Keep the fields made (references stolen) and let the chunk go. headers NULL: none,
 * the empty list is made when asked for. */
static int store(RecordObject *r, PyObject *key, PyObject *value, PyObject *headers) {
    r->key = key;
    r->value = value;
    r->headers = headers;
    Py_CLEAR(r->chunk);
    return 0;
}

/* Make key, value and headers out of the chunk, then let the chunk go. 0, or -1
 * with an exception set. */
static int materialize(RecordObject *r) {
    if (!r->chunk) return 0;
    const char *data = PyBytes_AS_STRING(r->chunk);
    Py_ssize_t length = PyBytes_GET_SIZE(r->chunk);
    PyObject *key = slice(data, length, r->key_position, r->key_length);
    PyObject *value = key ? slice(data, length, r->value_position, r->value_length) : NULL;
    PyObject *headers = NULL;
    if (value) {
        if (r->header_count == 0) {
            /* Made on access (field): a list is tracked by the cyclic GC, and one per
             * record made the young generation's collections, and the older ones its
             * survivors reach, a fifth of a poll that reads values. */
            return store(r, key, value, NULL);
        } else {
            PyObject *raw = slice(data, length, r->headers_position, (int32_t)r->headers_length);
            PyObject *count = raw ? PyLong_FromLong(r->header_count) : NULL;
            if (count && decode_headers)
                headers = PyObject_CallFunctionObjArgs(decode_headers, raw, count, NULL);
            else if (count)
                PyErr_SetString(PyExc_RuntimeError, "engine._records: no header decoder");
            Py_XDECREF(count);
            Py_XDECREF(raw);
        }
    }
    if (!headers) {
        Py_XDECREF(key);
        Py_XDECREF(value);
        return -1;
    }
    return store(r, key, value, headers);
}

static PyObject *field(RecordObject *r, Py_ssize_t i) {
    switch (i) {
    case 0: Py_INCREF(r->topic); return r->topic;
    case 1: return PyLong_FromLong(r->partition);
    case 2: return PyLong_FromLongLong(r->offset);
    case 3: return PyLong_FromLongLong(r->timestamp);
    }
    if (materialize(r) < 0) return NULL;
    if (i == 6 && !r->headers && !(r->headers = PyList_New(0))) return NULL;
    PyObject *out = i == 4 ? r->key : i == 5 ? r->value : r->headers;
    Py_INCREF(out);
    return out;
}

static PyObject *as_tuple(RecordObject *r) {
    PyObject *out = PyTuple_New(RECORD_FIELDS);
    for (Py_ssize_t i = 0; out && i < RECORD_FIELDS; i++) {
        PyObject *f = field(r, i);
        if (!f) Py_CLEAR(out);
        else PyTuple_SET_ITEM(out, i, f);
    }
    return out;
}

/* -- the type ---------------------------------------------------------------- */

static const char *field_names[RECORD_FIELDS] = {"topic", "partition", "offset", "timestamp",
                                                 "key", "value", "headers"};

static PyObject *record_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *topic, *key, *value, *headers;
    long partition;
    long long offset, timestamp;
    static char *names[] = {"topic", "partition", "offset", "timestamp", "key", "value",
                            "headers", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OlLLOOO:Record", names, &topic, &partition,
                                     &offset, &timestamp, &key, &value, &headers))
        return NULL;
    RecordObject *r = (RecordObject *)type->tp_alloc(type, 0);
    if (!r) return NULL;
    Py_INCREF(topic);
    Py_INCREF(key);
    Py_INCREF(value);
    Py_INCREF(headers);
    r->topic = topic;
    r->key = key;
    r->value = value;
    r->headers = headers;
    r->partition = (int32_t)partition;
    r->offset = offset;
    r->timestamp = timestamp;
    return (PyObject *)r;
}

/* Not tracked by the cyclic garbage collector: a record refers to a str, bytes and a
 * list of (str, bytes) pairs, never back to itself unless an application puts it
 * into its own headers list (then it leaks). Tracking every record made a collection
 * of the young generation every few polls. */
static void record_dealloc(RecordObject *r) {
    Py_CLEAR(r->chunk);
    Py_CLEAR(r->topic);
    Py_CLEAR(r->key);
    Py_CLEAR(r->value);
    Py_CLEAR(r->headers);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *get_field(RecordObject *r, void *i) { return field(r, (Py_ssize_t)i); }

static PyGetSetDef record_getset[] = {
    {"topic", (getter)get_field, NULL, "the topic", (void *)0},
    {"partition", (getter)get_field, NULL, "the partition", (void *)1},
    {"offset", (getter)get_field, NULL, "the record's offset", (void *)2},
    {"timestamp", (getter)get_field, NULL, "its timestamp, ms since the epoch", (void *)3},
    {"key", (getter)get_field, NULL, "its key: bytes, or None", (void *)4},
    {"value", (getter)get_field, NULL, "its value: bytes, or None", (void *)5},
    {"headers", (getter)get_field, NULL, "its headers: a list of (str, bytes)", (void *)6},
    {NULL, NULL, NULL, NULL, NULL},
};

static Py_ssize_t record_length(PyObject *self) { return RECORD_FIELDS; }

static PyObject *record_item(PyObject *self, Py_ssize_t i) {
    if (i < 0 || i >= RECORD_FIELDS) {
        PyErr_SetString(PyExc_IndexError, "Record index out of range");
        return NULL;
    }
    return field((RecordObject *)self, i);
}

static PyObject *record_subscript(PyObject *self, PyObject *index) {
    if (PyIndex_Check(index)) {
        Py_ssize_t i = PyNumber_AsSsize_t(index, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) return NULL;
        return record_item(self, i < 0 ? i + RECORD_FIELDS : i);
    }
    PyObject *t = as_tuple((RecordObject *)self);
    if (!t) return NULL;
    PyObject *out = PyObject_GetItem(t, index);
    Py_DECREF(t);
    return out;
}

static PyObject *record_iter(PyObject *self) {
    PyObject *t = as_tuple((RecordObject *)self);
    if (!t) return NULL;
    PyObject *it = PyObject_GetIter(t);
    Py_DECREF(t);
    return it;
}

static PyObject *record_richcompare(PyObject *a, PyObject *b, int op) {
    if (!PyObject_TypeCheck(a, &RecordType) && !PyTuple_Check(a)) Py_RETURN_NOTIMPLEMENTED;
    if (!PyObject_TypeCheck(b, &RecordType) && !PyTuple_Check(b)) Py_RETURN_NOTIMPLEMENTED;
    PyObject *ta = PyObject_TypeCheck(a, &RecordType) ? as_tuple((RecordObject *)a)
                                                       : (Py_INCREF(a), a);
    PyObject *tb = ta ? (PyObject_TypeCheck(b, &RecordType) ? as_tuple((RecordObject *)b)
                                                            : (Py_INCREF(b), b))
                      : NULL;
    PyObject *out = tb ? PyObject_RichCompare(ta, tb, op) : NULL;
    Py_XDECREF(ta);
    Py_XDECREF(tb);
    return out;
}

static Py_hash_t record_hash(PyObject *self) {
    PyObject *t = as_tuple((RecordObject *)self);
    if (!t) return -1;
    Py_hash_t h = PyObject_Hash(t);
    Py_DECREF(t);
    return h;
}

static PyObject *record_repr(PyObject *self) {
    PyObject *t = as_tuple((RecordObject *)self);
    if (!t) return NULL;
    PyObject *parts = PyList_New(0);
    for (int i = 0; parts && i < RECORD_FIELDS; i++) {
        PyObject *s = PyUnicode_FromFormat("%s=%R", field_names[i], PyTuple_GET_ITEM(t, i));
        if (!s || PyList_Append(parts, s) < 0) Py_CLEAR(parts);
        Py_XDECREF(s);
    }
    PyObject *sep = parts ? PyUnicode_FromString(", ") : NULL;
    PyObject *body = sep ? PyUnicode_Join(sep, parts) : NULL;
    PyObject *out = body ? PyUnicode_FromFormat("Record(%U)", body) : NULL;
    Py_XDECREF(body);
    Py_XDECREF(sep);
    Py_XDECREF(parts);
    Py_DECREF(t);
    return out;
}

static PyObject *record_reduce(PyObject *self, PyObject *unused) {
    PyObject *t = as_tuple((RecordObject *)self);
    if (!t) return NULL;
    PyObject *out = Py_BuildValue("(ON)", (PyObject *)Py_TYPE(self), t);
    return out;
}

static PyObject *record_asdict(PyObject *self, PyObject *unused) {
    PyObject *out = PyDict_New();
    for (int i = 0; out && i < RECORD_FIELDS; i++) {
        PyObject *f = field((RecordObject *)self, i);
        if (!f || PyDict_SetItemString(out, field_names[i], f) < 0) Py_CLEAR(out);
        Py_XDECREF(f);
    }
    return out;
}

static PyMethodDef record_methods[] = {
    {"__reduce__", record_reduce, METH_NOARGS, "pickled as its 7 fields"},
    {"_asdict", record_asdict, METH_NOARGS, "the fields as a dict (NamedTuple's name)"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods record_as_sequence = {
    .sq_length = record_length,
    .sq_item = record_item,
};

static PyMappingMethods record_as_mapping = {
    .mp_length = record_length,
    .mp_subscript = record_subscript,
};

static PyTypeObject RecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine.Record",
    .tp_doc = "A record as a consumer receives it: topic, partition, offset, timestamp, key, "
              "value, headers (also a 7-tuple of them). Key, value and headers are made "
              "when first read.",
    .tp_basicsize = sizeof(RecordObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = record_new,
    .tp_dealloc = (destructor)record_dealloc,
    .tp_getset = record_getset,
    .tp_methods = record_methods,
    .tp_as_sequence = &record_as_sequence,
    .tp_as_mapping = &record_as_mapping,
    .tp_iter = record_iter,
    .tp_richcompare = record_richcompare,
    .tp_hash = record_hash,
    .tp_repr = record_repr,
};

/* -- build ------------------------------------------------------------------- */

static PyObject *records_build(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyBytes_CheckExact(args[0]) || !PyUnicode_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "build(data: bytes, infos_address, count, topic: str, partition, "
                        "decode_headers)");
        return NULL;
    }
    PyObject *data = args[0];
    const engine_record_info_t *infos = PyLong_AsVoidPtr(args[1]);
    if (!infos && PyErr_Occurred()) return NULL;
    Py_ssize_t count = PyLong_AsSsize_t(args[2]);
    if (count == -1 && PyErr_Occurred()) return NULL;
    long partition = PyLong_AsLong(args[4]);
    if (partition == -1 && PyErr_Occurred()) return NULL;
    if (count < 0 || (count > 0 && !infos)) {
        PyErr_Format(PyExc_ValueError, "bad rows: count=%zd address=%p", count, (void *)infos);
        return NULL;
    }
    if (decode_headers != args[5]) {
        Py_INCREF(args[5]);
        Py_XSETREF(decode_headers, args[5]);
    }
    Py_ssize_t data_length = PyBytes_GET_SIZE(data);
    PyObject *out = PyList_New(count);
    for (Py_ssize_t i = 0; out && i < count; i++) {
        const engine_record_info_t *info = &infos[i];
        if ((int64_t)info->key_position + (info->key_length > 0 ? info->key_length : 0) >
                data_length ||
            (int64_t)info->value_position + (info->value_length > 0 ? info->value_length : 0) >
                data_length ||
            (int64_t)info->headers_position + info->headers_length > data_length) {
            PyErr_Format(PyExc_ValueError,
                         "record field outside the chunk: row=%zd chunk=%zd", i, data_length);
            Py_CLEAR(out);
            break;
        }
        RecordObject *r = PyObject_New(RecordObject, &RecordType);
        if (!r) {
            Py_CLEAR(out);
            break;
        }
        Py_INCREF(data);
        r->chunk = data;
        Py_INCREF(args[3]);
        r->topic = args[3];
        r->key = r->value = r->headers = NULL;
        r->offset = info->offset;
        r->timestamp = info->timestamp;
        r->partition = (int32_t)partition;
        r->key_length = info->key_length;
        r->value_length = info->value_length;
        r->header_count = info->header_count;
        r->key_position = info->key_position;
        r->value_position = info->value_position;
        r->headers_position = info->headers_position;
        r->headers_length = info->headers_length;
        PyList_SET_ITEM(out, i, (PyObject *)r);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"build", (PyCFunction)(void (*)(void))records_build, METH_FASTCALL,
     "build(data, infos_address, count, topic, partition, decode_headers) -> list[Record]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "engine._records", NULL, -1, methods};

PyMODINIT_FUNC PyInit__records(void) {
    if (PyType_Ready(&RecordType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&RecordType);
    if (PyModule_AddObject(m, "Record", (PyObject *)&RecordType) < 0) {
        Py_DECREF(&RecordType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
