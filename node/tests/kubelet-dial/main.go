// kubelet-dial calls a plugin-registration socket exactly as kubelet v1.37's plugin
// manager does (pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go,
// dial): grpc.DialContext with the socket PATH as the target and a unix dialer, so
// grpc-go sends that path as the HTTP/2 :authority. It then makes kubelet's two calls,
// GetInfo and NotifyRegistrationStatus(registered), and prints the PluginInfo as JSON.
// A gRPC error exits 1 with the error on stderr, which the Rust test shows.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kubelet-dial <registration socket path>")
		os.Exit(2)
	}
	socket := os.Args[1]
	// kubelet's own timeout for dial plus GetInfo.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	//nolint:staticcheck // DialContext is what kubelet calls; the point is to dial as it does.
	conn, err := grpc.DialContext(ctx, socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
	)
	if err != nil {
		fail("dial", err)
	}
	defer conn.Close()
	client := registerapi.NewRegistrationClient(conn)

	info, err := client.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		fail("GetInfo", err)
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		fail("NotifyRegistrationStatus", err)
	}
	out, err := json.Marshal(map[string]any{
		"type":               info.Type,
		"name":               info.Name,
		"endpoint":           info.Endpoint,
		"supported_versions": info.SupportedVersions,
	})
	if err != nil {
		fail("encoding PluginInfo", err)
	}
	fmt.Println(string(out))
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(1)
}
