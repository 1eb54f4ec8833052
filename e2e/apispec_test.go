package e2e

// The machine-readable API kept true: every WebSocket and SSE message the
// test clients receive is validated against docs/asyncapi.yaml, and every
// HTTP response of the helpers against docs/openapi.yaml (both as the
// server embeds and serves them). The validator is
// santhosh-tekuri/jsonschema: AsyncAPI payloads are JSON Schema (draft-07),
// OpenAPI 3.1 schemas are JSON Schema 2020-12, so one validator covers
// both, compiled in place inside each document so that their $refs resolve.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/saga-family/sagapush/docs"
)

const (
	asyncapiURL = "file:///docs/asyncapi.yaml"
	openapiURL  = "file:///docs/openapi.yaml"
)

// apiSpec holds both documents, compiled.
type apiSpec struct {
	// messages of each AsyncAPI send operation, by the message's name (its
	// event); "user_event" is every other name.
	ws, sse map[string]*jsonschema.Schema

	openapi map[string]any
	paths   []specPath
	oa      *jsonschema.Compiler
	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema // by JSON pointer into openapi.yaml
}

// specPath is one path of openapi.yaml, its template as a regexp.
type specPath struct {
	key string
	re  *regexp.Regexp
}

var (
	specOnce   sync.Once
	specLoaded *apiSpec
	specErr    error
)

// spec returns the documents, loaded and compiled once.
func spec() (*apiSpec, error) {
	specOnce.Do(func() { specLoaded, specErr = loadSpec(docs.AsyncAPI, docs.OpenAPI) })
	return specLoaded, specErr
}

// yamlToJSON decodes YAML into the values encoding/json gives (numbers as
// json.Number), which the validator takes.
func yamlToJSON(b []byte) (any, error) {
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(j))
}

func loadSpec(asyncDoc, openDoc []byte) (*apiSpec, error) {
	ad, err := yamlToJSON(asyncDoc)
	if err != nil {
		return nil, fmt.Errorf("asyncapi.yaml: %w", err)
	}
	od, err := yamlToJSON(openDoc)
	if err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	if v, _ := lookup(ad, "/asyncapi"); v != "3.0.0" {
		return nil, fmt.Errorf("asyncapi.yaml: asyncapi is %v, want 3.0.0", v)
	}
	if v, _ := lookup(od, "/openapi"); v != "3.1.0" {
		return nil, fmt.Errorf("openapi.yaml: openapi is %v, want 3.1.0", v)
	}
	ac := jsonschema.NewCompiler()
	ac.DefaultDraft(jsonschema.Draft7)
	if err := ac.AddResource(asyncapiURL, ad); err != nil {
		return nil, err
	}
	s := &apiSpec{openapi: od.(map[string]any), schemas: map[string]*jsonschema.Schema{}}
	for op, dst := range map[string]*map[string]*jsonschema.Schema{"sendOnWebSocket": &s.ws, "sendOnSSE": &s.sse} {
		*dst = map[string]*jsonschema.Schema{}
		if action, _ := lookup(ad, "/operations/"+op+"/action"); action != "send" {
			return nil, fmt.Errorf("asyncapi.yaml: operation %s is not a send", op)
		}
		refs, _ := lookup(ad, "/operations/"+op+"/messages")
		list, _ := refs.([]any)
		if len(list) == 0 {
			return nil, fmt.Errorf("asyncapi.yaml: operation %s has no messages", op)
		}
		for _, r := range list {
			ptr, msg, err := resolve(ad, r)
			if err != nil {
				return nil, fmt.Errorf("asyncapi.yaml: %s: %w", op, err)
			}
			name, _ := msg.(map[string]any)["name"].(string)
			if name == "" {
				return nil, fmt.Errorf("asyncapi.yaml: message %s has no name", ptr)
			}
			sch, err := ac.Compile(asyncapiURL + "#" + ptr + "/payload")
			if err != nil {
				return nil, fmt.Errorf("asyncapi.yaml: %s: %w", ptr, err)
			}
			(*dst)[name] = sch
		}
		if (*dst)["user_event"] == nil {
			return nil, fmt.Errorf("asyncapi.yaml: operation %s has no user_event", op)
		}
	}

	s.oa = jsonschema.NewCompiler()
	s.oa.DefaultDraft(jsonschema.Draft2020)
	if err := s.oa.AddResource(openapiURL, od); err != nil {
		return nil, err
	}
	paths, _ := s.openapi["paths"].(map[string]any)
	for key := range paths {
		pat := regexp.QuoteMeta(key)
		pat = regexp.MustCompile(`\\\{[^}]+\\\}`).ReplaceAllString(pat, `[^/]+`)
		s.paths = append(s.paths, specPath{key: key, re: regexp.MustCompile("^" + pat + "$")})
	}
	sort.Slice(s.paths, func(i, j int) bool { return s.paths[i].key < s.paths[j].key })
	// Every response schema compiles: a broken $ref fails here, not in
	// the one test that happens to meet it.
	for _, p := range s.paths {
		item := paths[p.key].(map[string]any)
		for method, op := range item {
			o, ok := op.(map[string]any)
			if !ok || method == "parameters" {
				continue
			}
			resps, _ := o["responses"].(map[string]any)
			for status := range resps {
				if _, err := s.responseSchemas(p.key, method, status); err != nil {
					return nil, err
				}
			}
		}
	}
	return s, nil
}

// lookup walks a JSON pointer ("/a/b", "~1" for "/") in a decoded document.
func lookup(doc any, ptr string) (any, bool) {
	v := doc
	if ptr == "" {
		return v, true
	}
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = c[tok]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			v = c[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// resolve follows a {"$ref": "#/..."} chain to its object and returns the
// object's pointer.
func resolve(doc, v any) (string, any, error) {
	ptr := ""
	for range 10 {
		m, ok := v.(map[string]any)
		if !ok {
			return ptr, v, nil
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return ptr, v, nil
		}
		if !strings.HasPrefix(ref, "#/") {
			return "", nil, fmt.Errorf("$ref %q is not local", ref)
		}
		ptr = ref[1:]
		if v, ok = lookup(doc, ptr); !ok {
			return "", nil, fmt.Errorf("$ref %q points nowhere", ref)
		}
	}
	return "", nil, fmt.Errorf("$ref chain too long at %s", ptr)
}

// escapePtr is one JSON pointer token.
func escapePtr(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// fragment makes a JSON pointer fit a URL fragment.
func fragment(ptr string) string {
	return (&url.URL{Fragment: ptr}).EscapedFragment()
}

// validateMessage checks one message of a transport ("ws" or "sse")
// against its AsyncAPI payload, chosen by the message's event.
func (s *apiSpec) validateMessage(transport string, b []byte) error {
	msgs := s.ws
	if transport == "sse" {
		msgs = s.sse
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not JSON: %v", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("not a JSON object")
	}
	name, _ := obj["event"].(string)
	sch := msgs[name]
	if sch == nil {
		sch = msgs["user_event"]
	}
	if err := sch.Validate(v); err != nil {
		return fmt.Errorf("%s message %q does not match asyncapi.yaml: %v", transport, name, err)
	}
	return nil
}

// specResponse is what a response of openapi.yaml allows for one
// status: its media types, with the compiled schema of the JSON ones.
type specResponse struct {
	ptr      string
	content  map[string]*jsonschema.Schema // media type -> schema (nil: not JSON)
	headers  map[string]string             // header -> the const its schema gives
	required []string                      // the headers that must be there
}

// compile compiles the schema at a JSON pointer of openapi.yaml, once.
func (s *apiSpec) compile(ptr string) (*jsonschema.Schema, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch := s.schemas[ptr]; sch != nil {
		return sch, nil
	}
	sch, err := s.oa.Compile(openapiURL + "#" + fragment(ptr))
	if err != nil {
		return nil, fmt.Errorf("openapi.yaml %s: %w", ptr, err)
	}
	s.schemas[ptr] = sch
	return sch, nil
}

func (s *apiSpec) responseSchemas(pathKey, method, status string) (*specResponse, error) {
	ptr := "/paths/" + escapePtr(pathKey) + "/" + method + "/responses/" + status
	v, ok := lookup(s.openapi, ptr)
	if !ok {
		return nil, nil
	}
	rptr, r, err := resolve(s.openapi, v)
	if err != nil {
		return nil, fmt.Errorf("openapi.yaml %s: %w", ptr, err)
	}
	if rptr == "" {
		rptr = ptr
	}
	resp, _ := r.(map[string]any)
	out := &specResponse{ptr: rptr, content: map[string]*jsonschema.Schema{}, headers: map[string]string{}}
	content, _ := resp["content"].(map[string]any)
	for mt := range content {
		out.content[mt] = nil
		if mt != "application/json" {
			continue
		}
		sch, err := s.compile(rptr + "/content/" + escapePtr(mt) + "/schema")
		if err != nil {
			return nil, err
		}
		out.content[mt] = sch
	}
	headers, _ := resp["headers"].(map[string]any)
	for h, hv := range headers {
		if c, ok := lookup(hv, "/schema/const"); ok {
			out.headers[h], _ = c.(string)
			if req, _ := lookup(hv, "/required"); req == true {
				out.required = append(out.required, h)
			}
		}
	}
	return out, nil
}

// validateHTTP checks one response against openapi.yaml: the path and
// method must be documented (any other gets the error answer of 404), the
// status must be documented (or fall under default), the
// Content-Type one of that response's media types (none: no body), a
// header with a const that value (a required one present), and a JSON body
// its schema. body is nil for a
// body not read (a stream).
func (s *apiSpec) validateHTTP(method, rawPath string, resp *http.Response, body []byte) error {
	u, err := url.Parse(rawPath)
	if err != nil {
		return err
	}
	status := strconv.Itoa(resp.StatusCode)
	var r *specResponse
	var item map[string]any
	for _, p := range s.paths {
		if p.re.MatchString(u.Path) {
			item = s.openapi["paths"].(map[string]any)[p.key].(map[string]any)
			m := strings.ToLower(method)
			if _, ok := item[m]; !ok {
				break // an undocumented method: the error answer
			}
			if r, err = s.responseSchemas(p.key, m, status); err == nil && r == nil {
				r, err = s.responseSchemas(p.key, m, "default")
			}
			if err != nil {
				return err
			}
			if r == nil {
				return fmt.Errorf("%s %s: status %d is not in openapi.yaml", method, u.Path, resp.StatusCode)
			}
			break
		}
	}
	where := fmt.Sprintf("%s %s: %d", method, u.Path, resp.StatusCode)
	if r == nil { // not a documented operation: 404 with the error body
		if resp.StatusCode != http.StatusNotFound {
			return fmt.Errorf("%s: an operation that openapi.yaml does not have answered other than 404", where)
		}
		loc := "/components/responses/Error"
		sch, err := s.compile(loc + "/content/application~1json/schema")
		if err != nil {
			return err
		}
		r = &specResponse{ptr: loc, content: map[string]*jsonschema.Schema{"application/json": sch}}
	}
	for _, h := range r.required {
		if resp.Header.Get(h) == "" {
			return fmt.Errorf("%s: no %s header, which openapi.yaml (%s) requires", where, h, r.ptr)
		}
	}
	for h, want := range r.headers {
		if got := resp.Header.Get(h); got != "" && got != want {
			return fmt.Errorf("%s: header %s is %q, openapi.yaml (%s) says %q", where, h, got, r.ptr, want)
		}
	}
	ct := resp.Header.Get("Content-Type")
	if len(r.content) == 0 {
		if len(body) > 0 {
			return fmt.Errorf("%s: a body (%s) where openapi.yaml (%s) has none", where, ct, r.ptr)
		}
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return fmt.Errorf("%s: Content-Type %q: %v", where, ct, err)
	}
	sch, ok := r.content[mt]
	if !ok {
		return fmt.Errorf("%s: Content-Type %q is not one of openapi.yaml's (%s)", where, ct, r.ptr)
	}
	if sch == nil || body == nil || (method == http.MethodHead && len(body) == 0) {
		return nil
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: body is not JSON: %q", where, body)
	}
	if err := sch.Validate(v); err != nil {
		return fmt.Errorf("%s: body %s does not match openapi.yaml (%s): %v", where, body, r.ptr, err)
	}
	return nil
}

// checkMessage validates a received message, returning "" when it is valid
// or the documents could not be loaded (which TestAPIDocuments reports).
func checkMessage(transport string, b []byte) string {
	s, err := spec()
	if err != nil {
		return "loading the API documents: " + err.Error()
	}
	if err := s.validateMessage(transport, b); err != nil {
		return err.Error()
	}
	return ""
}

// checkHTTP validates a response; "" when it is valid.
func checkHTTP(method, path string, resp *http.Response, body []byte) string {
	s, err := spec()
	if err != nil {
		return "loading the API documents: " + err.Error()
	}
	if err := s.validateHTTP(method, path, resp, body); err != nil {
		return err.Error()
	}
	return ""
}

// specErrors collects validation failures found on a reader goroutine, for
// the test to report.
type specErrors struct {
	mu   sync.Mutex
	errs []string
}

func (e *specErrors) add(msg string) {
	if msg == "" {
		return
	}
	e.mu.Lock()
	e.errs = append(e.errs, msg)
	e.mu.Unlock()
}

// take returns and forgets the failures so far.
func (e *specErrors) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	errs := e.errs
	e.errs = nil
	return errs
}
