package incluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bulwarkmesh/bulwark/identity/issuer"
)

// DefaultAudience is the audience a workload's projected ServiceAccount
// token must be for.
const DefaultAudience = "bulwark"

// TokenReviewer checks ServiceAccount tokens with the API server's
// TokenReview, for the audience Bulwark's tokens are minted for, and
// accepts only tokens bound to a pod that is still alive.
type TokenReviewer struct {
	Client   kubernetes.Interface
	Audience string // defaults to DefaultAudience
}

var _ issuer.ServiceAccountReviewer = (*TokenReviewer)(nil)

// Errors of Review, besides the API server's.
var (
	ErrTokenRejected = errors.New("token rejected by the API server")
	ErrNotBound      = errors.New("token is not bound to a pod")
	ErrPodGone       = errors.New("the pod the token is bound to is gone")
)

// Review returns who the token belongs to.
func (r *TokenReviewer) Review(ctx context.Context, token string) (issuer.ServiceAccountIdentity, error) {
	aud := r.Audience
	if aud == "" {
		aud = DefaultAudience
	}
	tr, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{aud}},
	}, metav1.CreateOptions{})
	if err != nil {
		return issuer.ServiceAccountIdentity{}, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		msg := tr.Status.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return issuer.ServiceAccountIdentity{}, fmt.Errorf("%w: %s", ErrTokenRejected, msg)
	}
	if !slices.Contains(tr.Status.Audiences, aud) {
		return issuer.ServiceAccountIdentity{}, fmt.Errorf("%w: not for audience %q", ErrTokenRejected, aud)
	}
	parts := strings.Split(tr.Status.User.Username, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" {
		return issuer.ServiceAccountIdentity{}, fmt.Errorf("%w: %q is not a service account", ErrTokenRejected, tr.Status.User.Username)
	}
	id := issuer.ServiceAccountIdentity{Namespace: parts[2], ServiceAccount: parts[3]}
	podName := first(tr.Status.User.Extra["authentication.kubernetes.io/pod-name"])
	podUID := first(tr.Status.User.Extra["authentication.kubernetes.io/pod-uid"])
	if podName == "" || podUID == "" {
		return issuer.ServiceAccountIdentity{}, ErrNotBound
	}
	pod, err := r.Client.CoreV1().Pods(id.Namespace).Get(ctx, podName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return issuer.ServiceAccountIdentity{}, fmt.Errorf("%w: %s/%s", ErrPodGone, id.Namespace, podName)
	case err != nil:
		return issuer.ServiceAccountIdentity{}, fmt.Errorf("pod %s/%s: %w", id.Namespace, podName, err)
	case string(pod.UID) != podUID || pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return issuer.ServiceAccountIdentity{}, fmt.Errorf("%w: %s/%s", ErrPodGone, id.Namespace, podName)
	}
	id.Pod = podName
	return id, nil
}

func first(v authnv1.ExtraValue) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
