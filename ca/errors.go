package ca

import "errors"

// Errors returned by the CA. Callers test for them with errors.Is.
var (
	// ErrNoCA means the CA directory holds no CA material.
	ErrNoCA = errors.New("no CA material")
	// ErrExists means Init found CA material it will not overwrite.
	ErrExists = errors.New("CA material already exists")
	// ErrInvalidCA means the CA material is inconsistent or unusable.
	ErrInvalidCA = errors.New("invalid CA material")
	// ErrForeignID means a requested identity is outside the trust domain.
	ErrForeignID = errors.New("identity is outside the trust domain")
	// ErrProfile means a certificate breaks the X.509-SVID profile.
	ErrProfile = errors.New("certificate breaks the X.509-SVID profile")
	// ErrKey means a public key is of a type or size the CA will not sign.
	ErrKey = errors.New("unsupported public key")
)
