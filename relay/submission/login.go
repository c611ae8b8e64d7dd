package submission

import (
	"errors"

	"github.com/emersion/go-sasl"
)

// loginServer is the server side of the LOGIN mechanism (an old Microsoft
// draft, still what many devices and libraries send), which go-sasl offers
// only as a client.
type loginServer struct {
	step     int
	username string
	verify   func(username, password string) error
}

func newLoginServer(verify func(username, password string) error) sasl.Server {
	return &loginServer{verify: verify}
}

func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step++
		if response != nil { // initial response carries the user name
			s.username = string(response)
			s.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		s.username = string(response)
		s.step++
		return []byte("Password:"), false, nil
	case 2:
		s.step++
		return nil, true, s.verify(s.username, string(response))
	}
	return nil, false, errors.New("unexpected LOGIN response")
}
