//go:build !race

package tlspolicy_test

const exhaustiveStride = 1
