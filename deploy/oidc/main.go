// testop: the OpenID Provider careledger's integration tests sign in against.
//
// It is the zitadel/oidc library's own example provider (an OpenID-certified Go
// library, github.com/zitadel/oidc/v3, its example/server packages used unmodified:
// in-memory storage, a username/password login page, RS256 ID tokens, PKCE S256),
// with three changes of setting made here rather than in its code:
//   - it serves HTTPS (TLS_CERT, TLS_KEY) on loopback, so the issuer is
//     https://localhost:PORT/ as a real deployment's would be https;
//   - the one client is ours (CLIENT_ID, CLIENT_SECRET, REDIRECT_URI: a web client,
//     client_secret_basic, as the example defines web clients);
//   - the users come from USERS_FILE (the example's JSON format).
//
// Built by deploy/bootstrap.sh into deploy/oidc/bin/testop; never used in production.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
)

func need(name string) string {
	value := os.Getenv(name)
	if value == "" {
		fmt.Fprintf(os.Stderr, "testop: %s is not set\n", name)
		os.Exit(2)
	}
	return value
}

func main() {
	port := need("PORT")
	cert, key := need("TLS_CERT"), need("TLS_KEY")
	issuer := fmt.Sprintf("https://localhost:%s/", port)
	storage.RegisterClients(
		storage.WebClient(need("CLIENT_ID"), need("CLIENT_SECRET"), strings.Split(need("REDIRECT_URI"), ",")...),
	)
	users, err := storage.StoreFromFile(need("USERS_FILE"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "testop: cannot read USERS_FILE: %v\n", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	router := exampleop.SetupServer(issuer, storage.NewStorage(users), logger, false)
	server := &http.Server{Addr: "127.0.0.1:" + port, Handler: router}
	logger.Info("testop listening", "issuer", issuer)
	if err := server.ListenAndServeTLS(cert, key); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "testop: %v\n", err)
		os.Exit(1)
	}
}
