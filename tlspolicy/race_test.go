//go:build race

package tlspolicy_test

// Under the race detector the exhaustive test decides every 17th
// combination (a prime stride, so every dimension's values are reached);
// CI also runs it whole without the detector.
const exhaustiveStride = 17
