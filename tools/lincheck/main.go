// Command lincheck checks a key/value register history for linearizability with
// porcupine (github.com/anishathalye/porcupine), partitioned per key.
//
// Usage: lincheck [--viz out.html] [history.json]   (reads stdin without a file)
//
// The history is a JSON array of operations:
//
//	{"client": 0,                      // integer >= 0, one per concurrent caller
//	 "op": "get" | "put" | "cas",
//	 "key": "k",
//	 "value": "v",                     // put/cas only: the value written (non-empty)
//	 "expect": "old",                  // cas only: value it compares with, "" = absent
//	 "call": 100,                      // invocation time, integer ns
//	 "return": 250 | null,             // response time, integer ns; null = unknown
//	 "output": {"value": "v"}          // get: value read, "" = absent
//	         | {"ok": true}            // cas: whether it applied
//	         | {}                      // put
//	         | null}                   // outcome unknown
//
// Every field must be present ("return" and "output" may be null); unknown
// fields are refused, so a typo cannot silently weaken the check.
//
// An operation whose return or output is null is indeterminate (a timeout, a
// lost connection). As porcupine's author recommends (porcupine issue #8), it
// "returns" after every other operation and its step applies the effect without
// checking an output: linearizing it at the very end is the same as it never
// taking effect, so both outcomes are allowed.
//
// Exit status: 0 linearizable; 1 not linearizable (the failing keys are
// printed); 2 malformed input (the operation index and field are named);
// 3 the visualization could not be written.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/anishathalye/porcupine"
)

type input struct {
	op, key, value, expect string
}

// output of one operation; known is false for an indeterminate one.
type output struct {
	known bool
	value string // get: the value read
	ok    bool   // cas: whether it applied
}

// step is the sequential specification of one key; its state is the key's
// value, "" meaning absent. An indeterminate operation's output is not checked:
// it may linearize anywhere after its call, the very end included, which covers
// "never took effect" (for a cas, also "compared and failed").
func step(state, in, out any) (bool, any) {
	st, i, o := state.(string), in.(input), out.(output)
	switch i.op {
	case "get":
		return !o.known || o.value == st, st
	case "put":
		return true, i.value
	default: // cas
		applies := st == i.expect
		if o.known && o.ok != applies {
			return false, st
		}
		if applies {
			return true, i.value
		}
		return true, st
	}
}

func partition(history []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	for _, op := range history {
		k := op.Input.(input).key
		byKey[k] = append(byKey[k], op)
	}
	var parts [][]porcupine.Operation
	for _, k := range slices.Sorted(maps.Keys(byKey)) {
		parts = append(parts, byKey[k])
	}
	return parts
}

func describeOp(in, out any) string {
	i, o := in.(input), out.(output)
	result := "?"
	switch i.op {
	case "get":
		if o.known {
			result = quote(o.value)
		}
		return fmt.Sprintf("get(%q) -> %s", i.key, result)
	case "put":
		return fmt.Sprintf("put(%q, %q)", i.key, i.value)
	default:
		if o.known {
			result = map[bool]string{true: "ok", false: "failed"}[o.ok]
		}
		return fmt.Sprintf("cas(%q, %s -> %q) -> %s", i.key, quote(i.expect), i.value, result)
	}
}

func quote(v string) string {
	if v == "" {
		return "<absent>"
	}
	return fmt.Sprintf("%q", v)
}

var model = porcupine.Model{
	Partition:         partition,
	Init:              func() any { return "" },
	Step:              step,
	Hash:              func(s any) uint64 { h := fnv.New64a(); h.Write([]byte(s.(string))); return h.Sum64() },
	DescribeOperation: describeOp,
	DescribeState:     func(s any) string { return quote(s.(string)) },
}

// reader decodes one operation's fields, keeping the first problem it meets.
type reader struct {
	where  string // "operation 3" or "operation 3: output"
	fields map[string]json.RawMessage
	err    error
}

func newReader(where string, raw json.RawMessage, allowed ...string) *reader {
	r := &reader{where: where}
	if err := json.Unmarshal(raw, &r.fields); err != nil || r.fields == nil {
		r.err = fmt.Errorf("%s: must be a JSON object", where)
		return r
	}
	for name := range r.fields {
		if !slices.Contains(allowed, name) {
			r.fail(name, "unknown field (expected one of %s)", strings.Join(allowed, ", "))
		}
	}
	return r
}

func (r *reader) fail(field, format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: field %q: %s", r.where, field, fmt.Sprintf(format, args...))
	}
}

// read decodes field into dst; it reports whether the field held a non-null value.
func (r *reader) read(field string, dst any, kind string) bool {
	raw, present := r.fields[field]
	if !present {
		r.fail(field, "missing (must be %s)", kind)
		return false
	}
	if string(raw) == "null" {
		return false
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		r.fail(field, "must be %s, got %s", kind, raw)
		return false
	}
	return true
}

func (r *reader) absent(field, why string) {
	if _, present := r.fields[field]; present {
		r.fail(field, "%s", why)
	}
}

func parseOp(idx int, raw json.RawMessage) (op porcupine.Operation, indeterminate bool, err error) {
	r := newReader(fmt.Sprintf("operation %d", idx), raw, "client", "op", "key", "value", "expect", "call", "return", "output")
	var client int
	var in input
	var call, ret int64
	if r.read("client", &client, "an integer >= 0") && client < 0 {
		r.fail("client", "must be an integer >= 0, got %d", client)
	}
	if r.read("op", &in.op, `"get", "put" or "cas"`) && in.op != "get" && in.op != "put" && in.op != "cas" {
		r.fail("op", `must be "get", "put" or "cas", got %q`, in.op)
	}
	if r.read("key", &in.key, "a non-empty string") && in.key == "" {
		r.fail("key", "must be a non-empty string")
	}
	if in.op == "get" {
		r.absent("value", "a get writes nothing; the value it read goes in output.value")
	} else if r.read("value", &in.value, "a non-empty string") && in.value == "" {
		r.fail("value", `must be non-empty: "" means absent`)
	}
	if in.op == "cas" {
		r.read("expect", &in.expect, `a string ("" = absent)`)
	} else {
		r.absent("expect", "only a cas has an expected value")
	}
	r.read("call", &call, "an integer (ns)")
	hasReturn := r.read("return", &ret, "an integer (ns) or null")
	if hasReturn && ret < call {
		r.fail("return", "%d is before call %d", ret, call)
	}
	var outRaw json.RawMessage
	out := output{known: r.read("output", &outRaw, "an object or null")}
	if r.err == nil && out.known {
		o := newReader(r.where+": output", outRaw, "value", "ok")
		switch in.op {
		case "get":
			o.read("value", &out.value, `a string ("" = absent)`)
		case "cas":
			o.read("ok", &out.ok, "true or false")
			o.absent("value", "a cas reports only ok")
		default:
			o.absent("value", "a put has no result value")
			o.absent("ok", "a put has no ok flag")
		}
		r.err = o.err
	}
	if r.err != nil {
		return op, false, r.err
	}
	indeterminate = !hasReturn || !out.known
	out.known = !indeterminate
	op = porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret, Metadata: fmt.Sprintf("history[%d]", idx)}
	return op, indeterminate, nil
}

func parseHistory(data []byte) ([]porcupine.Operation, error) {
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return nil, fmt.Errorf("history: invalid JSON at byte %d: %v", syntax.Offset, err)
		}
		return nil, fmt.Errorf("history: must be a JSON array of operations")
	}
	ops := make([]porcupine.Operation, len(raws))
	var unknown []int
	var latest int64
	for i, raw := range raws {
		op, indeterminate, err := parseOp(i, raw)
		if err != nil {
			return nil, err
		}
		ops[i] = op
		latest = max(latest, op.Call, op.Return)
		if indeterminate {
			unknown = append(unknown, i)
		}
	}
	for _, i := range unknown {
		ops[i].Return = latest + 1 // after every other operation
	}
	return ops, nil
}

func main() {
	viz := flag.String("viz", "", "write porcupine's HTML visualization of the history to this file")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lincheck [--viz out.html] [history.json]  (reads stdin without a file)")
	}
	flag.Parse()
	if flag.NArg() > 1 {
		flag.Usage()
		os.Exit(2)
	}
	var data []byte
	var err error
	if flag.NArg() == 1 {
		data, err = os.ReadFile(flag.Arg(0))
	} else {
		data, err = io.ReadAll(os.Stdin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "lincheck: reading the history: %v\n", err)
		os.Exit(2)
	}
	history, err := parseHistory(data)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lincheck: %v\n", err)
		os.Exit(2)
	}

	var failed []string
	for _, part := range partition(history) {
		if !porcupine.CheckOperations(model, part) {
			failed = append(failed, fmt.Sprintf("key %q (%d operations)", part[0].Input.(input).key, len(part)))
		}
	}
	if *viz != "" {
		_, info := porcupine.CheckOperationsVerbose(model, history, 0)
		if err := porcupine.VisualizePath(model, info, *viz); err != nil {
			fmt.Fprintf(os.Stderr, "lincheck: writing the visualization: %v\n", err)
			os.Exit(3)
		}
	}
	if len(failed) > 0 {
		fmt.Printf("not linearizable: %s\n", strings.Join(failed, ", "))
		if *viz != "" {
			fmt.Printf("visualization: %s\n", *viz)
		}
		os.Exit(1)
	}
	fmt.Println("linearizable")
}
