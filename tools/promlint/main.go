// Command promlint parses a Prometheus text exposition (what /metrics serves)
// with Prometheus' own parser (github.com/prometheus/common/expfmt, through
// client_golang's testutil/promlint) and lints it with promlint's rules, plus
// one of ours: a histogram or summary carries its unit (`_seconds`, `_bytes`…).
//
// Usage: promlint [exposition.txt]   (reads stdin without a file)
//
// Exit 0: it parses and no problem was found. Exit 1: one line per problem,
// `<metric>: <problem>`. Exit 2: the input does not parse (expfmt's error,
// with the line number) or cannot be read.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

// Base units a histogram or summary name may end in (Prometheus naming
// practices: seconds, bytes, meters, ...; a ratio for 0..1 fractions).
var baseUnits = []string{"seconds", "bytes", "meters", "grams", "joules", "volts", "amperes", "celsius", "ratio"}

// lintDistributionUnit refuses unit-less histograms and summaries: an
// observation means nothing without its unit.
func lintDistributionUnit(mf *dto.MetricFamily) []error {
	t := mf.GetType()
	if t != dto.MetricType_HISTOGRAM && t != dto.MetricType_GAUGE_HISTOGRAM && t != dto.MetricType_SUMMARY {
		return nil
	}
	for _, u := range baseUnits {
		if strings.HasSuffix(mf.GetName(), "_"+u) {
			return nil
		}
	}
	return []error{fmt.Errorf("histogram and summary names should end in a base unit (_%s)", strings.Join(baseUnits, ", _"))}
}

func main() {
	var in io.Reader = os.Stdin
	switch len(os.Args) {
	case 1:
	case 2:
		f, err := os.Open(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "promlint:", err)
			os.Exit(2)
		}
		defer f.Close()
		in = f
	default:
		fmt.Fprintln(os.Stderr, "usage: promlint [exposition.txt]")
		os.Exit(2)
	}
	l := promlint.New(in)
	l.AddCustomValidations(lintDistributionUnit)
	problems, err := l.Lint()
	if err != nil {
		fmt.Fprintln(os.Stderr, "promlint: the exposition does not parse:", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Printf("%s: %s\n", p.Metric, p.Text)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}
