package protocol

import "unicode/utf8"

// MaxIDLen bounds ids from clients (projects, stories, users); Saga's are
// UUIDs.
const MaxIDLen = 128

// ValidID rejects ids that are empty, too long, or hold control characters
// or the separators of the since and cursor formats (',' and ':').
func ValidID(s string) bool {
	if s == "" || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f || s[i] == ',' || s[i] == ':' {
			return false
		}
	}
	return utf8.ValidString(s)
}
