package model

import "math/bits"

// bitset is a set of small non-negative integers, 64 to a word.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int) { b[i/64] |= 1 << (i % 64) }

// and keeps only what o holds too; or adds what o holds. o is as long as b.
func (b bitset) and(o bitset) {
	for w := range b {
		b[w] &= o[w]
	}
}

func (b bitset) or(o bitset) {
	for w := range b {
		b[w] |= o[w]
	}
}

// count returns how many b holds; countAnd how many both b and o hold.
func (b bitset) count() int {
	n := 0
	for _, x := range b {
		n += bits.OnesCount64(x)
	}
	return n
}

func (b bitset) countAnd(o bitset) int {
	n := 0
	for w, x := range b {
		n += bits.OnesCount64(x & o[w])
	}
	return n
}

// first returns the smallest member of b, -1 if none; firstAnd the
// smallest that o holds too.
func (b bitset) first() int { return b.firstAnd(nil) }

func (b bitset) firstAnd(o bitset) int {
	for w, x := range b {
		if o != nil {
			x &= o[w]
		}
		if x != 0 {
			return w*64 + bits.TrailingZeros64(x)
		}
	}
	return -1
}

// each calls f with every member of b that o does not hold, ascending.
func (b bitset) each(o bitset, f func(int)) {
	for w, x := range b {
		x &^= o[w]
		for x != 0 {
			f(w*64 + bits.TrailingZeros64(x))
			x &= x - 1
		}
	}
}
