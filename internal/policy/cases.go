package policy

import (
	"fmt"
	"os"

	"gopkg.in/yaml.v3"
)

// TestFile is the format of `strongroom policy test FILE.yaml`:
//
//	cases:
//	  - name: researcher uses a restricted model from Germany
//	    principal: {id: alice, tenant: acme, roles: [researcher], screening: clear}
//	    action: infer          # default infer
//	    model: {name: m, classification: restricted}
//	    context: {client_country: DE, top_logprobs: 0}
//	    expect: allow          # or deny
type TestFile struct {
	Cases []Case `yaml:"cases"`
}

// Case is one request and its expected decision.
type Case struct {
	Name      string `yaml:"name"`
	Principal struct {
		ID        string   `yaml:"id"`
		Tenant    string   `yaml:"tenant"`
		Roles     []string `yaml:"roles"`
		Org       string   `yaml:"org"`
		Country   string   `yaml:"country"`
		Screening string   `yaml:"screening"`
	} `yaml:"principal"`
	Action string `yaml:"action"`
	Model  struct {
		Name             string   `yaml:"name"`
		Classification   string   `yaml:"classification"`
		AllowedCountries []string `yaml:"allowed_countries"`
		DeniedCountries  []string `yaml:"denied_countries"`
	} `yaml:"model"`
	Context struct {
		Endpoint      string `yaml:"endpoint"`
		ClientCountry string `yaml:"client_country"`
		IP            string `yaml:"ip"`
		HourUTC       int    `yaml:"hour_utc"`
		MFAAgeS       int64  `yaml:"mfa_age_s"`
		Stream        bool   `yaml:"stream"`
		Logprobs      bool   `yaml:"logprobs"`
		TopLogprobs   int    `yaml:"top_logprobs"`
		LogitBias     bool   `yaml:"logit_bias"`
		N             int    `yaml:"n"`
		MaxTokens     int    `yaml:"max_tokens"`
		// TemperatureMilli: absent is -1 (left to the engine), as in requests.
		TemperatureMilli *int64 `yaml:"temperature_milli"`
	} `yaml:"context"`
	Expect string `yaml:"expect"`
}

// Request turns a case into a policy request.
func (c Case) Request() Request {
	a := c.Action
	if a == "" {
		a = ActionInfer
	}
	p, m, x := c.Principal, c.Model, c.Context
	temp := int64(-1)
	if x.TemperatureMilli != nil {
		temp = *x.TemperatureMilli
	}
	return Request{
		Principal: Principal{ID: p.ID, Tenant: p.Tenant, Org: p.Org, Country: p.Country, Screening: p.Screening, Roles: p.Roles},
		Action:    a,
		Model:     Model{Name: m.Name, Classification: m.Classification, AllowedCountries: m.AllowedCountries, DeniedCountries: m.DeniedCountries},
		Context: Context{Endpoint: x.Endpoint, ClientCountry: x.ClientCountry, IP: x.IP, HourUTC: x.HourUTC, MFAAgeS: x.MFAAgeS,
			Stream: x.Stream, Logprobs: x.Logprobs, TopLogprobs: x.TopLogprobs, LogitBias: x.LogitBias, N: x.N, MaxTokens: x.MaxTokens, TemperatureMilli: temp},
	}
}

// Result is the outcome of one case.
type Result struct {
	Case   string
	Want   string
	Got    Decision
	Passed bool
}

// RunFile runs a test file against a set.
func RunFile(s *Set, path string) ([]Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var tf TestFile
	if err := yaml.Unmarshal(b, &tf); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []Result
	for i, c := range tf.Cases {
		if c.Expect != "allow" && c.Expect != "deny" {
			return nil, fmt.Errorf("%s: case %d (%s): expect must be allow or deny", path, i, c.Name)
		}
		d := s.Decide(c.Request())
		out = append(out, Result{Case: c.Name, Want: c.Expect, Got: d, Passed: d.Allow == (c.Expect == "allow")})
	}
	return out, nil
}
