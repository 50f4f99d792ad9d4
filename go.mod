module github.com/strongroom/strongroom

go 1.26.8

require (
	github.com/google/go-cmp v0.7.0
	github.com/miekg/pkcs11 v1.1.2
)
