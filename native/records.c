/*
 * records.c - the Records of Consumer.poll() made in one CPython call (module
 * engine._records).
 *
 * engine_batch_decode (batch.c, reached through cffi) indexes the records of a
 * chunk of batches into engine_record_info_t rows. Turning each row into a
 * Record in Python (a 12-field tolist, two slices, a tuple) cost about 2.5 us a
 * record on the reference machine, which capped poll() near 400,000 records/s
 * per consumer. This module is only that loop:
 *
 *   build(record_type, data, infos_address: int, count: int, topic: str,
 *         partition: int, decode_headers: callable) -> list[record_type]
 *
 * record_type is a tuple subtype of 7 fields (topic, partition, offset,
 * timestamp, key, value, headers), made as tuple.__new__ would make it. data is
 * any buffer (the chunk the rows index); infos_address points at count rows.
 * key and value are copied out as bytes (None for a length of -1); headers is a
 * new empty list, or decode_headers(bytes of the headers, header_count) when
 * the record has any (rare: left to Python). A row that points outside data
 * raises ValueError (engine_batch_decode never makes one).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "batch.h"

#define RECORD_FIELDS 7

/* bytes of data[position : position + length], None for length -1; NULL (with
 * ValueError) when that is outside data. */
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

static PyObject *headers_of(const char *data, Py_ssize_t data_length,
                            const engine_record_info_t *info, PyObject *decode_headers) {
    if (info->header_count == 0) return PyList_New(0);
    PyObject *raw = slice(data, data_length, info->headers_position,
                          (int32_t)info->headers_length);
    if (!raw) return NULL;
    PyObject *count = PyLong_FromLong(info->header_count);
    PyObject *headers = count ? PyObject_CallFunctionObjArgs(decode_headers, raw, count, NULL)
                              : NULL;
    Py_XDECREF(count);
    Py_DECREF(raw);
    return headers;
}

/* One Record, or NULL with an exception set. */
static PyObject *record(PyTypeObject *type, const char *data, Py_ssize_t data_length,
                        const engine_record_info_t *info, PyObject *topic, PyObject *partition,
                        PyObject *decode_headers) {
    PyObject *fields[RECORD_FIELDS] = {topic, partition, NULL, NULL, NULL, NULL, NULL};
    Py_INCREF(topic);
    Py_INCREF(partition);
    fields[2] = PyLong_FromLongLong(info->offset);
    fields[3] = fields[2] ? PyLong_FromLongLong(info->timestamp) : NULL;
    fields[4] = fields[3] ? slice(data, data_length, info->key_position, info->key_length) : NULL;
    fields[5] = fields[4] ? slice(data, data_length, info->value_position, info->value_length)
                          : NULL;
    fields[6] = fields[5] ? headers_of(data, data_length, info, decode_headers) : NULL;
    PyObject *out = fields[6] ? type->tp_alloc(type, RECORD_FIELDS) : NULL;
    if (!out) {
        for (int i = 0; i < RECORD_FIELDS; i++) Py_XDECREF(fields[i]);
        return NULL;
    }
    for (int i = 0; i < RECORD_FIELDS; i++) PyTuple_SET_ITEM(out, i, fields[i]);
    return out;
}

static PyObject *records_build(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyType_Check(args[0]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "build(record_type, data, infos_address, count, topic, partition, "
                        "decode_headers): record_type must be a tuple subtype");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    const engine_record_info_t *infos = PyLong_AsVoidPtr(args[2]);
    if (!infos && PyErr_Occurred()) return NULL;
    Py_ssize_t count = PyLong_AsSsize_t(args[3]);
    if (count == -1 && PyErr_Occurred()) return NULL;
    if (count < 0 || (count > 0 && !infos)) {
        PyErr_Format(PyExc_ValueError, "bad rows: count=%zd address=%p", count, (void *)infos);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *out = PyList_New(count);
    for (Py_ssize_t i = 0; out && i < count; i++) {
        PyObject *r = record(type, view.buf, view.len, &infos[i], args[4], args[5], args[6]);
        if (!r) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, r);
    }
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"build", (PyCFunction)(void (*)(void))records_build, METH_FASTCALL,
     "build(record_type, data, infos_address, count, topic, partition, decode_headers)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "engine._records", NULL, -1, methods};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }
