package main

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/gateway"
)

// nodeDir is test/node, the npm project of the Node SDK test (go test runs in this
// package's directory).
var nodeDir, _ = filepath.Abs(filepath.Join("..", "..", "test", "node"))

// devEnv reads a dev.env file (NAME=VALUE lines, "export " allowed).
func devEnv(ts *testscript.TestScript, file string) map[string]string {
	env := map[string]string{}
	for _, line := range strings.Split(ts.ReadFile(file), "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "export ")
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = strings.Trim(v, `'"`)
		}
	}
	return env
}

// TestOpenAISDKs runs testdata/sdk: the official clients against a real dev deployment.
// Its condition [node] is whether node and the npm openai package are there; when
// scripts/test requires every integration (STRONGROOM_REQUIRE_INTEGRATION=1), their
// absence fails the script instead of skipping its Node part.
func TestOpenAISDKs(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata/sdk", Cmds: scriptCmds, Condition: func(cond string) (bool, error) {
		if cond != "node" {
			return false, fmt.Errorf("unknown condition %q", cond)
		}
		missing := ""
		if _, err := exec.LookPath("node"); err != nil {
			missing = "node not found"
		} else if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", "openai", "package.json")); err != nil {
			missing = "the openai package is not installed in " + nodeDir + " (npm ci)"
		}
		if missing != "" && os.Getenv("STRONGROOM_REQUIRE_INTEGRATION") == "1" {
			return false, fmt.Errorf("%s, but STRONGROOM_REQUIRE_INTEGRATION=1: run ./scripts/test", missing)
		}
		return missing == "", nil
	}})
}

func init() {
	// nodesdk ENVFILE LIMITEDKEYFILE: the official OpenAI Node.js SDK (test/node) against
	// the gateway ENVFILE describes; LIMITEDKEYFILE holds a key that may not use its model.
	scriptCmds["nodesdk"] = func(ts *testscript.TestScript, neg bool, args []string) {
		node, err := exec.LookPath("node")
		ts.Check(err)
		cmd := exec.Command(node, "--test", "--test-reporter=spec", "compat.test.mjs")
		cmd.Dir = nodeDir
		cmd.Env = os.Environ()
		for k, v := range devEnv(ts, args[0]) {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Env = append(cmd.Env, "STRONGROOM_LIMITED_KEY="+strings.TrimSpace(ts.ReadFile(args[1])))
		cmd.Stdout, cmd.Stderr = ts.Stdout(), ts.Stderr()
		if err := cmd.Run(); err != nil {
			ts.Fatalf("node SDK tests: %v", err)
		}
	}
	// oaigo ENVFILE LIMITEDKEYFILE: the same checks with the official openai-go client.
	scriptCmds["oaigo"] = func(ts *testscript.TestScript, neg bool, args []string) {
		c, model := devClient(ts, args[0])
		ctx := context.Background()
		m, err := c.Models.Get(ctx, model)
		if err != nil || m.ID != model || m.Object != "model" {
			ts.Fatalf("retrieve %s: %+v %v", model, m, err)
		}
		env := devEnv(ts, args[0])
		limited := openai.NewClient(option.WithBaseURL(env["STRONGROOM_URL"]+"/"), option.WithAPIKey(strings.TrimSpace(ts.ReadFile(args[1]))), option.WithMaxRetries(0))
		_, denied := limited.Models.Get(ctx, model)
		_, unknown := limited.Models.Get(ctx, "no-such-model")
		var de, ue *openai.Error
		if !errors.As(denied, &de) || !errors.As(unknown, &ue) || de.StatusCode != 404 || de.RawJSON() != ue.RawJSON() {
			ts.Fatalf("a model the key may not use must look unknown: %v / %v", denied, unknown)
		}

		comp, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(model),
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("the model weights")}, MaxTokens: openai.Int(5), Logprobs: openai.Int(2)})
		ts.Check(err)
		lp := comp.Choices[0].Logprobs
		if len(lp.Tokens) == 0 || strings.Join(lp.Tokens, "") != comp.Choices[0].Text || len(lp.TextOffset) != len(lp.Tokens) || len(lp.TopLogprobs[0]) != 2 {
			ts.Fatalf("completions logprobs %+v for %q", lp, comp.Choices[0].Text)
		}

		var resp *http.Response
		chat, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("the model weights")}, MaxTokens: openai.Int(3),
			N: openai.Int(2), Logprobs: openai.Bool(true), TopLogprobs: openai.Int(9), LogitBias: map[string]int64{"65": 3}},
			option.WithResponseInto(&resp))
		ts.Check(err)
		if len(chat.Choices) != 2 || chat.Choices[1].Index != 1 {
			ts.Fatalf("n=2: %d choices", len(chat.Choices))
		}
		for _, e := range chat.Choices[0].Logprobs.Content {
			for _, a := range e.TopLogprobs {
				if a.Token == "" || len(a.Bytes) == 0 {
					ts.Fatalf("top_logprobs entry without its token: %+v", a)
				}
			}
		}
		if h := resp.Header.Get(gateway.HardenedHeader); !strings.Contains(h, "logit_bias=stripped") {
			ts.Fatalf("%s: %q", gateway.HardenedHeader, h)
		}

		in := openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"the model weights", "a sealed vault"}}
		emb, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: model, Input: in})
		ts.Check(err)
		b64, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: model, Input: in, EncodingFormat: openai.EmbeddingNewParamsEncodingFormatBase64})
		ts.Check(err)
		a := emb.Data[0].Embedding
		bin, err := base64.StdEncoding.DecodeString(strings.Trim(b64.Data[0].JSON.Embedding.Raw(), `"`))
		if err != nil || len(a) == 0 || len(bin) != 4*len(a) {
			ts.Fatalf("embeddings: %d floats, %d base64 bytes (%v)", len(a), len(bin), err)
		}
		sq, diff := 0.0, 0.0
		for k, x := range a {
			sq += x * x
			diff += math.Abs(x - emb.Data[1].Embedding[k])
			if float32(x) != math.Float32frombits(binary.LittleEndian.Uint32(bin[4*k:])) {
				ts.Fatalf("embedding component %d: float and base64 differ", k)
			}
		}
		if math.Abs(sq-1) > 1e-4 || diff == 0 {
			ts.Fatalf("embeddings: |v|² %g, distinct inputs differ by %g", sq, diff)
		}

		_, err = c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}})
		var ae *openai.Error
		if !errors.As(err, &ae) || ae.StatusCode != 400 {
			ts.Fatalf("no model: %v", err)
		}
	}
}
