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
 *   init(send_address: int, future_type: type) -> None
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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <structmember.h>

#include "ring.h"

typedef int64_t (*send_fn)(engine_route_t *, int32_t, const char *, int32_t, const char *,
                           int32_t);

static send_fn ring_send = NULL;
static PyTypeObject *future_type = NULL;

static PyObject *shim_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[1], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "init(send_address, future_type): a tuple subtype");
        return NULL;
    }
    void *address = PyLong_AsVoidPtr(args[0]);
    if (!address) return NULL;
    ring_send = (send_fn)address;
    Py_XDECREF(future_type);
    Py_INCREF(args[1]);
    future_type = (PyTypeObject *)args[1];
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

/* future_type((topic, partition, offset, timestamp_ms, None)) of the record just sent:
 * engine.future.RecordFuture, decided when made. */
static PyObject *make_future(PyObject *topic, const engine_route_t *route, int64_t offset) {
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
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(future, 4, Py_None);
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
    return make_future(args[1], route, offset);
}

/* The fields of one record a Sender call names, in send()'s parameter order. */
enum { ARG_TOPIC, ARG_VALUE, ARG_KEY, ARG_HEADERS, ARG_PARTITION, ARG_TIMESTAMP, ARG_COUNT };
static const char *const arg_names[ARG_COUNT] = {"topic", "value", "key", "headers",
                                                 "partition", "timestamp_ms"};
static PyObject *arg_strings[ARG_COUNT]; /* interned, made at module init */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fast;    /* dict: topic -> (route address, route) */
    PyObject *general; /* the Python send */
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

static PyObject *sender_call(PyObject *callable, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames) {
    Sender *self = (Sender *)callable;
    PyObject *a[ARG_COUNT];
    if (self->paused || !ring_send || !sender_parse(args, nargsf, kwnames, a) ||
        (a[ARG_HEADERS] && a[ARG_HEADERS] != Py_None) ||
        (a[ARG_TIMESTAMP] && a[ARG_TIMESTAMP] != Py_None) || !PyUnicode_CheckExact(a[ARG_TOPIC]))
        goto general;
    PyObject *entry = PyDict_GetItemWithError(self->fast, a[ARG_TOPIC]); /* borrowed */
    if (!entry) {
        if (PyErr_Occurred()) return NULL;
        goto general;
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) goto general;
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
    int64_t offset = ring_send(route, partition, key, key_length, value, value_length);
    if (offset < 0) { /* full, sealed, too large, no such partition: the general path */
        Py_DECREF(entry);
        goto general;
    }
    PyObject *future = make_future(a[ARG_TOPIC], route, offset);
    Py_DECREF(entry);
    return future;
general:
    return PyObject_Vectorcall(self->general, args, nargsf, kwnames);
}

static PyObject *sender_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *fast, *general;
    if (!PyArg_ParseTuple(args, "O!O:Sender", &PyDict_Type, &fast, &general)) return NULL;
    if (!PyCallable_Check(general)) {
        PyErr_SetString(PyExc_TypeError, "Sender(fast, general): general must be callable");
        return NULL;
    }
    Sender *self = (Sender *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->vectorcall = sender_call;
    Py_INCREF(fast);
    self->fast = fast;
    Py_INCREF(general);
    self->general = general;
    return (PyObject *)self;
}

static int sender_traverse(Sender *self, visitproc visit, void *arg) {
    Py_VISIT(self->fast);
    Py_VISIT(self->general);
    return 0;
}

static int sender_clear(Sender *self) {
    Py_CLEAR(self->fast);
    Py_CLEAR(self->general);
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
    if (PyType_Ready(&SenderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0) {
        Py_DECREF(&SenderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
