package controlplane

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
)

// statusEvents is how many of the latest events Status reports.
const statusEvents = 10

// TrustStatusOf reports st, and with ev what the proxies hold. ev nil is
// a State read offline (from a CA directory): nothing is known of proxies.
func TrustStatusOf(st *trust.State, ev *trust.Evidence) *cav1.TrustStatus {
	out := &cav1.TrustStatus{TrustDomain: st.TrustDomain.String(), Sequence: st.Sequence, Managed: true, Offline: ev == nil}
	leaves := map[string]uint32{}
	if ev != nil {
		out.Proxies = uint32(len(ev.Proxies))
		out.Missing = ev.Missing
		for _, h := range holders(ev.Proxies) {
			out.Holders = append(out.Holders, &cav1.BundleHolders{Sequence: h.seq, Proxies: uint32(h.n)})
		}
		for _, p := range ev.Proxies {
			if seq := ackedSeq(p); seq < st.Sequence {
				out.Laggards = append(out.Laggards, laggard(p, st.Sequence))
			}
			for _, l := range p.Leaves {
				if l.Issuer != "" {
					leaves[l.Issuer]++
				}
			}
		}
	}
	for _, a := range st.Authorities {
		out.Authorities = append(out.Authorities, &cav1.TrustAuthority{
			Id: a.ID, Phase: string(a.Phase), RootSubject: a.Root.Subject.CommonName, SigningSubject: a.Signing().Subject.CommonName,
			RootNotAfter: ts(a.Root.NotAfter), SigningNotAfter: ts(a.Signing().NotAfter), Origin: a.Origin, RootKeyHeld: a.RootKey != nil,
			Revoked: a.Revoked, PreparedSeq: a.PreparedSeq, PreparedAt: ts(a.PreparedAt), ActivatedAt: ts(a.ActivatedAt),
			RetiredAt: ts(a.RetiredAt), RemovedAt: ts(a.RemovedAt), Leaves: leaves[a.ID],
		})
	}
	if st.Rotation != nil {
		out.Rotation = rotationProto(st.Rotation)
	}
	for _, r := range st.Revocations {
		out.Revocations = append(out.Revocations, &cav1.TrustRevocation{Kind: string(r.Kind), Value: r.Value, Serials: r.Serials,
			Reason: r.Reason, By: r.By, At: ts(r.At), Expires: ts(r.Expires)})
	}
	for _, c := range st.ImportedCRLs {
		out.ImportedCrls = append(out.ImportedCrls, &cav1.TrustImportedCRL{Authority: c.Authority, Problem: c.Problem, ImportedAt: ts(c.ImportedAt), By: c.By})
	}
	for _, e := range st.Events[max(0, len(st.Events)-statusEvents):] {
		out.Events = append(out.Events, eventProto(e))
	}
	return out
}

// laggard names a proxy behind seq as the gates do.
func laggard(p trust.ProxyAck, seq uint64) string {
	name := p.Node
	if p.Replica != "" {
		name += " (via " + p.Replica + ")"
	}
	if !p.Reported {
		return fmt.Sprintf("%s (its agent reported no bundle; current %d)", name, seq)
	}
	return fmt.Sprintf("%s (holds bundle %d, current %d)", name, ackedSeq(p), seq)
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func rotationProto(r *trust.Rotation) *cav1.TrustRotation {
	return &cav1.TrustRotation{Kind: r.Kind, Old: r.Old, Target: r.Target, Step: r.Step, StartedAt: ts(r.StartedAt), By: r.By,
		Reason: r.Reason, Auto: r.Auto, Force: r.Force}
}

func eventProto(e trust.Event) *cav1.TrustEvent {
	return &cav1.TrustEvent{At: ts(e.At), Who: e.Who, Action: e.Action, Authority: e.Authority, Detail: e.Detail, Forced: e.Forced}
}

// WriteTrustStatus prints a status as `bulwark ca status` shows it. Every
// value that came from outside (subjects, names, reasons) is printed
// escaped.
func WriteTrustStatus(out io.Writer, s *cav1.TrustStatus, now time.Time) {
	if !s.GetManaged() {
		fmt.Fprintln(out, s.GetUnmanaged())
		return
	}
	fmt.Fprintf(out, "Trust domain %s, bundle sequence %d", name(s.GetTrustDomain()), s.GetSequence())
	switch {
	case s.GetOffline():
		fmt.Fprint(out, " (read from the CA directory: nothing is known of proxies)")
	case !s.GetLeading():
		fmt.Fprint(out, " (this replica follows; another drives rotations)")
	}
	fmt.Fprintln(out)
	for _, w := range s.GetWarnings() {
		fmt.Fprintf(out, "WARNING: %s\n", text(w))
	}

	fmt.Fprintln(out, "\nAuthorities:")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tPHASE\tROOT\tROOT EXPIRES\tSIGNING\tSIGNING EXPIRES\tORIGIN\tLEAVES")
	for _, a := range s.GetAuthorities() {
		phase := a.GetPhase()
		if a.GetRevoked() {
			phase += ",revoked"
		}
		if !a.GetRootKeyHeld() && a.GetPhase() != string(trust.Removed) {
			phase += " (no root key)"
		}
		leaves := "-"
		if !s.GetOffline() {
			leaves = fmt.Sprint(a.GetLeaves())
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.GetId(), phase, name(a.GetRootSubject()), until(a.GetRootNotAfter().AsTime(), now),
			name(a.GetSigningSubject()), until(a.GetSigningNotAfter().AsTime(), now), name(a.GetOrigin()), leaves)
	}
	_ = tw.Flush()

	if !s.GetOffline() {
		fmt.Fprintf(out, "\nProxies: %d connected", s.GetProxies())
		var hs []string
		for _, h := range s.GetHolders() {
			label := fmt.Sprintf("bundle %d", h.GetSequence())
			if h.GetSequence() == 0 {
				label = "none reported"
			}
			hs = append(hs, fmt.Sprintf("%d hold %s", h.GetProxies(), label))
		}
		if len(hs) > 0 {
			fmt.Fprintf(out, ": %s", strings.Join(hs, ", "))
		}
		fmt.Fprintln(out)
		if n := len(s.GetLaggards()); n > 0 {
			fmt.Fprintf(out, "Behind the current bundle (%d):\n", n)
			for _, l := range s.GetLaggards()[:min(n, 20)] {
				fmt.Fprintf(out, "  %s\n", name(l))
			}
			if n > 20 {
				fmt.Fprintf(out, "  and %d more\n", n-20)
			}
		}
		for _, m := range s.GetMissing() {
			fmt.Fprintf(out, "Missing evidence (every gate refuses until it is back): %s\n", text(m))
		}
	}

	fmt.Fprintln(out)
	if r := s.GetRotation(); r != nil {
		auto := ""
		if r.GetAuto() {
			auto = " (automatic renewal)"
		}
		fmt.Fprintf(out, "Rotation: %s%s of %s to %s, step %s, started %s ago by %s\n", r.GetKind(), auto, r.GetOld(), orDash(r.GetTarget()),
			r.GetStep(), ago(now, r.GetStartedAt().AsTime()), name(r.GetBy()))
		if r.GetWaiting() != "" {
			fmt.Fprintf(out, "  waiting: %s\n", text(r.GetWaiting()))
			for _, l := range r.GetLaggards()[:min(len(r.GetLaggards()), 20)] {
				fmt.Fprintf(out, "    %s\n", name(l))
			}
		}
	} else {
		fmt.Fprintln(out, "Rotation: none in progress")
	}

	if len(s.GetRevocations()) == 0 {
		fmt.Fprintln(out, "Revocations: none")
	} else {
		fmt.Fprintln(out, "Revocations:")
		for _, r := range s.GetRevocations() {
			fmt.Fprintf(out, "  %s %s: %d serials, by %s %s ago, expires %s: %s\n", r.GetKind(), name(r.GetValue()), len(r.GetSerials()),
				name(r.GetBy()), ago(now, r.GetAt().AsTime()), until(r.GetExpires().AsTime(), now), text(r.GetReason()))
		}
	}
	if len(s.GetImportedCrls()) > 0 {
		fmt.Fprintln(out, "Imported CRLs:")
		for _, c := range s.GetImportedCrls() {
			state := "in use"
			if c.GetProblem() != "" {
				state = "REJECTED: " + text(c.GetProblem())
			}
			fmt.Fprintf(out, "  for %s, imported %s ago by %s: %s\n", orDash(c.GetAuthority()), ago(now, c.GetImportedAt().AsTime()), name(c.GetBy()), state)
		}
	}
	if len(s.GetEvents()) > 0 {
		fmt.Fprintln(out, "\nLatest events:")
		for _, e := range s.GetEvents() {
			WriteEvent(out, e)
		}
	}
}

// WriteEvent prints one event on a line: when, who, what.
func WriteEvent(out io.Writer, e *cav1.TrustEvent) {
	forced := ""
	if e.GetForced() {
		forced = " FORCED"
	}
	fmt.Fprintf(out, "  %s %s%s %s by %s: %s\n", e.GetAt().AsTime().UTC().Format(time.RFC3339), e.GetAction(), forced,
		orDash(e.GetAuthority()), name(e.GetWho()), text(e.GetDetail()))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return name(s)
}

func until(t, now time.Time) string {
	if !t.After(now) {
		return "EXPIRED " + ago(now, t) + " ago"
	}
	d := t.Sub(now)
	if d > 48*time.Hour {
		return fmt.Sprintf("%s (%dd)", t.UTC().Format("2006-01-02"), int(d.Hours()/24))
	}
	return "in " + d.Round(time.Minute).String()
}

// text is free text as printed: escaped and bounded.
func text(s string) string { return bounded.Text(s, bounded.Message) }
