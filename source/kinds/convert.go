package kinds

import (
	"maps"
	"slices"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
	"github.com/bulwarkmesh/bulwark/model"
)

// This file is the one place where the public types of api/v1alpha1 turn
// into model types. Each function copies every field; a field added to
// an API type without a line here is caught by TestConversionKeepsEveryField.

// MeshSpec converts a Mesh document's spec. The result is not defaulted
// or validated yet: see model.MeshSpec.
func MeshSpec(in *v1alpha1.MeshSpec) *model.MeshSpec {
	out := &model.MeshSpec{
		TrustDomain:   in.TrustDomain,
		MTLS:          model.MeshMTLS{Mode: model.MTLSMode(in.MTLS.Mode), Exception: exception(in.MTLS.Exception)},
		Authorization: model.Authorization{Default: model.DefaultAccess(in.Authorization.Default), ScopeConfig: clonePtr(in.Authorization.ScopeConfig)},
	}
	for _, s := range in.Services {
		ms := model.Service{Namespace: s.Namespace, Name: s.Name, Address: s.Address}
		for _, p := range s.Ports {
			ms.Ports = append(ms.Ports, model.ServicePort{Name: p.Name, Port: p.Port, TargetPort: p.TargetPort, Protocol: model.Protocol(p.Protocol)})
		}
		out.Services = append(out.Services, ms)
	}
	for _, w := range in.Workloads {
		mw := model.Workload{
			Namespace: w.Namespace, Name: w.Name, ServiceAccount: w.ServiceAccount, Labels: maps.Clone(w.Labels),
			Address: w.Address, Services: slices.Clone(w.Services), LocalAddress: w.LocalAddress, Capture: model.Capture(w.Capture),
		}
		for _, u := range w.Upstreams {
			mw.Upstreams = append(mw.Upstreams, model.Upstream{Service: u.Service, Namespace: u.Namespace, Port: u.Port, LocalPort: u.LocalPort})
		}
		out.Workloads = append(out.Workloads, mw)
	}
	return out
}

// AccessPolicySpec converts an AccessPolicy's spec.
func AccessPolicySpec(in *v1alpha1.AccessPolicySpec) model.AccessPolicySpec {
	out := model.AccessPolicySpec{
		Selector: model.AccessSelector{Service: in.Selector.Service, MatchLabels: maps.Clone(in.Selector.MatchLabels)},
		Action:   model.Action(in.Action),
		DryRun:   in.DryRun,
	}
	for _, r := range in.Rules {
		mr := model.AccessRule{}
		for _, s := range r.From {
			mr.From = append(mr.From, model.Source{ServiceAccounts: slices.Clone(s.ServiceAccounts), Namespaces: slices.Clone(s.Namespaces),
				SPIFFEIDs: slices.Clone(s.SPIFFEIDs), Unauthenticated: s.Unauthenticated})
		}
		for _, o := range r.To {
			mr.To = append(mr.To, model.Operation{Ports: slices.Clone(o.Ports), Methods: slices.Clone(o.Methods),
				Paths: slices.Clone(o.Paths), IgnoreCase: o.IgnoreCase})
		}
		out.Rules = append(out.Rules, mr)
	}
	return out
}

// MTLSPolicySpec converts an MTLSPolicy's spec.
func MTLSPolicySpec(in *v1alpha1.MTLSPolicySpec) model.MTLSPolicySpec {
	out := model.MTLSPolicySpec{Mode: model.MTLSMode(in.Mode), Exception: exception(in.Exception)}
	if in.Selector != nil {
		out.Selector = &model.Selector{MatchLabels: maps.Clone(in.Selector.MatchLabels)}
	}
	if in.PortModes != nil {
		out.PortModes = make(map[string]model.MTLSMode, len(in.PortModes))
		for k, v := range in.PortModes {
			out.PortModes[k] = model.MTLSMode(v)
		}
	}
	return out
}

func exception(in *v1alpha1.Exception) *model.Exception {
	if in == nil {
		return nil
	}
	return &model.Exception{Reason: in.Reason, Owner: in.Owner, Expires: in.Expires}
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}
