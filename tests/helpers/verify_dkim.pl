#!/usr/bin/perl
# Verify every DKIM signature of the message on stdin with Mail::DKIM, taking the
# public keys from DKIM_TXT_RECORDS (zone-file lines) instead of the public DNS.
# Prints one line per signature: domain, selector, algorithm, result, detail.
use strict;
use warnings;

package StaticResolver;
use Net::DNS;

# Mail::DKIM::DNS::resolver() accepts any object answering send() and errorstring()
# as Net::DNS::Resolver does; this one answers from a fixed list of records.
sub new { my ( $class, @rr ) = @_; return bless { rr => \@rr }, $class }

sub send {
    my ( $self, $name, $type ) = @_;
    my $packet = Net::DNS::Packet->new( $name, $type, 'IN' );
    $packet->header->qr(1);
    my @answer = grep { lc( $_->owner ) eq lc($name) && $_->type eq $type } @{ $self->{rr} };
    $packet->header->rcode( @answer ? 'NOERROR' : 'NXDOMAIN' );
    $packet->push( answer => @answer );
    return $packet;
}

sub errorstring { return 'NOERROR' }

package Ed25519PublicKey;
use Crypt::PK::Ed25519;
use MIME::Base64;

# The cork (key object) Mail::DKIM keeps for an Ed25519 key, with the size() it asks.
sub new {
    my ( $class, $data ) = @_;
    my $key = Crypt::PK::Ed25519->new;
    $key->import_key_raw( decode_base64($data), 'public' );
    return bless { key => $key }, $class;
}
sub size   { return 32 }
sub verify { my ( $self, $digest, $sig ) = @_; return $self->{key}->verify_message( $sig, $digest ) }

package Ed25519Sha256;
use base 'Mail::DKIM::Algorithm::rsa_sha256';
use MIME::Base64;

# RFC 8463: Ed25519 over the SHA-256 of the canonicalised header block. Mail::DKIM
# still parses, canonicalises and hashes the message and checks bh=; only this step is ours.
sub verify {
    my $self   = shift;
    my $digest = $self->{header_digest}->digest;
    my $sig    = decode_base64( $self->signature->data );
    return unless $self->signature->get_public_key->cork->verify( $digest, $sig );
    return $self->check_body_hash;
}

package main;
use Mail::DKIM::DNS;
use Mail::DKIM::PublicKey;
use Mail::DKIM::Signature;
use Mail::DKIM::Verifier;

# Debian 12's Mail::DKIM (1.20230212) knows only rsa-sha*: teach it ed25519-sha256
# (RFC 8463) the way later upstream releases do, through CryptX.
{
    no warnings 'redefine';
    my $algorithm_class = \&Mail::DKIM::Signature::get_algorithm_class;
    *Mail::DKIM::Signature::get_algorithm_class = sub {
        my ( $self, $algorithm ) = @_;
        return 'Ed25519Sha256' if $algorithm eq 'ed25519-sha256';
        return $algorithm_class->(@_);
    };
    my $check = \&Mail::DKIM::PublicKey::check;
    *Mail::DKIM::PublicKey::check = sub {
        my $self = shift;
        return $check->( $self, @_ ) unless ( $self->get_tag('k') // '' ) eq 'ed25519';
        die "unsupported version\n" unless ( $self->get_tag('v') // 'DKIM1' ) eq 'DKIM1';
        my $data = $self->data;
        die "missing p= tag\n" unless defined $data;
        die "revoked\n" if $data eq '';
        $self->cork( Ed25519PublicKey->new($data) );
        return 1;
    };
}

my @records = map { Net::DNS::RR->new($_) } grep { /\S/ } split /\n/, $ENV{DKIM_TXT_RECORDS} // '';
Mail::DKIM::DNS::resolver( StaticResolver->new(@records) );

my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
local $/ = \65536;
while ( my $chunk = <STDIN> ) { $verifier->PRINT($chunk) }
$verifier->CLOSE;
for my $signature ( $verifier->signatures ) {
    printf "%s\t%s\t%s\t%s\t%s\n", $signature->domain, $signature->selector,
      $signature->algorithm, $signature->result, $signature->result_detail // '';
}
